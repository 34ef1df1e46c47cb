-- wrk script for `harmony bench`: POSTs pre-signed requests, each one once.
--
--   wrk -t1 -c32 -d10s -s bench/ingest.lua http://127.0.0.1:PORT -- requests.tsv 1
--
-- requests.tsv holds one request per line: path, webhook-id, webhook-timestamp,
-- webhook-signature and the JSON body, separated by tabs (signatures stay valid 5 minutes).
-- The second argument is wrk's thread count (-t). Each wrk thread takes every n-th line, so no
-- two threads send the same event; a thread that runs out starts its share again and counts a
-- wrap (Harmony answers those repeats "duplicate").
-- done() prints one line "BENCH_JSON {...}" for the runner.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = {}
local index = 0
wraps = 0

function init(args)
  local file = assert(io.open(args[1], "r"))
  local nthreads = tonumber(args[2]) or 1
  local line_number = 0
  for line in file:lines() do
    if line_number % nthreads == id then
      local path, event_id, timestamp, signature, body =
        line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", path, {
        ["content-type"] = "application/json",
        ["webhook-id"] = event_id,
        ["webhook-timestamp"] = timestamp,
        ["webhook-signature"] = signature,
      }, body)
    end
    line_number = line_number + 1
  end
  file:close()
end

function request()
  index = index + 1
  if index > #requests then
    index = 1
    wraps = wraps + 1
  end
  return requests[index]
end

function done(summary, latency, _)
  local total_wraps = 0
  for _, thread in ipairs(threads) do
    total_wraps = total_wraps + (thread:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "wraps": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, total_wraps))
end
