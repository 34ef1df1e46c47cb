"""`harmony bench`'s pure parts and its peers' protocol handling, in process and on loopback.

No test here runs the benchmark or asserts a time: the figures are the benchmark's business.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from harmony.adapters.generic_http.signing import SignatureError, Signer, new_secret
from harmony.cli import build_parser
from harmony.dev.bench import report
from harmony.dev.bench.ceiling import parse_wrk, write_requests
from harmony.dev.bench.load import LoadConfig, build_requests, created_events, run_phase
from harmony.dev.bench.options import BenchOptions
from harmony.dev.bench.peers import PeerConfig, Peers
from harmony.dev.bench.phase import Snapshot, summarise_phase, verdict
from harmony.dev.bench.scale import clone_sql
from harmony.dev.bench.stats import (
    BackendCpu,
    RateVerdict,
    best_rate,
    falls_behind,
    max_sustained,
    next_probe,
    percentile,
    spread,
    sustains,
)
from harmony.dev.bench.wire import HttpServerProtocol, WebhookKey, response_bytes

# --- arithmetic ---------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 30.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 90) == pytest.approx(46.0)
    assert percentile(list(reversed(values)), 25) == 20.0
    assert percentile([], 99) is None


def test_spread_of_nothing_has_no_figures() -> None:
    assert spread([]) == {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    assert spread([1.04, 2.0, 3.0]) == {"n": 3, "p50": 2.0, "p95": 2.9, "p99": 3.0, "max": 3.0}


def test_the_best_rate_is_the_plateau_when_none_was_sustained() -> None:
    # Two replicas on two cores, from one replica's maximum: 156 offered, 140 routed.
    assert best_rate([RateVerdict(156.2, 140.15, 332.2)]) == (140.15, "plateau")
    assert best_rate([RateVerdict(100, 99, 50), RateVerdict(150, 120, 900)]) == (99, "sustained")
    assert best_rate([]) == (0.0, "plateau")


def test_a_rate_is_sustained_with_goodput_near_offered_and_delivery_p99_under_a_second() -> None:
    assert sustains(RateVerdict(40, 38.5, 200))
    assert not sustains(RateVerdict(40, 37.0, 200))  # more than 5% short
    assert not sustains(RateVerdict(40, 40, 1500))  # too slow
    assert not sustains(RateVerdict(40, 40, None))  # nothing delivered
    assert falls_behind(RateVerdict(40, 35, 100))
    assert not falls_behind(RateVerdict(40, 37, 5000))


def test_max_sustained_is_the_best_goodput_among_sustained_rates() -> None:
    ladder = [RateVerdict(10, 10, 50), RateVerdict(20, 19.8, 80), RateVerdict(40, 27, 9000)]
    assert max_sustained(ladder) == 19.8
    assert max_sustained([RateVerdict(10, 3, 9000)]) == 0.0


def test_a_probe_is_tried_below_a_plateau_clearly_above_the_best_sustained_rate() -> None:
    ladder = [RateVerdict(20, 20, 80), RateVerdict(40, 30, 9000)]
    assert next_probe(ladder) == 28.0
    # the plateau is no better than what was sustained: nothing to refine
    assert next_probe([RateVerdict(20, 20, 80), RateVerdict(40, 20.5, 9000)]) is None
    # every rate sustained: nothing to refine
    assert next_probe([RateVerdict(20, 20, 80)]) is None
    # tried, and missed: below what it routed
    assert next_probe([*ladder, RateVerdict(28, 26, 3000)]) == 24.0
    assert next_probe([*ladder, RateVerdict(28, 26, 3000), RateVerdict(24, 21, 3000)]) is None


def test_when_the_plateau_was_offered_already_the_probe_goes_below_the_first_rate_missed() -> None:
    # A full run on a 2-core machine: 60 sustained, 80 routed 72.7 (some refused early), 120
    # routed 84.4; 95% of the plateau is 80, tried already: 95% of 72.7 is tried instead.
    ladder = [
        RateVerdict(40, 39.87, 30),
        RateVerdict(60, 60.09, 45),
        RateVerdict(80, 72.7, 400),
        RateVerdict(120, 84.42, 420),
    ]
    assert next_probe(ladder) == 69.0
    assert next_probe([*ladder, RateVerdict(69, 68.9, 60)]) is None
    # no rate between the best sustained one and the first missed is worth a probe
    assert next_probe([RateVerdict(60, 60, 45), RateVerdict(64, 61, 400)]) is None


def test_backend_cpu_counts_only_what_was_used_inside_the_window() -> None:
    backends = BackendCpu()
    backends.sample([os.getpid()], fresh=True)
    assert backends.used_ms() == 0.0
    backends.sample([os.getpid(), 2**22 + 7])  # a pid that does not exist is skipped
    assert backends.used_ms() >= 0.0


# --- the report --------------------------------------------------------------------------------


def _phase(label: str, offered: float, routed: float, p99: float) -> dict[str, Any]:
    return {
        "label": label,
        "offered_per_s": offered,
        "routed_per_s": routed,
        "create_to_delivery_ms": {"p50": p99 / 2, "p99": p99},
        "webhook_ms": {"p99": 12.0},
        "cpu_ms_per_routed": 30.0,
        "statements_per_routed": 50.0,
        "commits_per_routed": 13.0,
    }


def test_summary_carries_every_key_even_when_parts_were_skipped() -> None:
    summary = report.summary({"options": {}})
    assert set(report.SUMMARY_KEYS) <= set(summary)
    assert all(summary[key] is None for key in report.SUMMARY_KEYS)


def test_summary_takes_cpu_from_the_max_phase_and_latency_from_the_half_rate() -> None:
    results = {
        "ladder": [_phase("rate20", 20, 20, 100), _phase("rate40", 40, 27, 9000)],
        "max_phase": "rate20",
        "max_sustained_routed_per_s": 20.0,
        "half": {**_phase("half10", 10, 10, 35), "webhook_ms": {"p99": 9.0}},
        "ceiling": {"ceiling_rps": 2000.0, "ingest_rps": 500.0},
    }
    summary = report.summary(results)
    assert summary["max_routed_per_s"] == 20.0
    assert summary["routed_over_ceiling"] == 0.01
    assert summary["ingest_over_ceiling"] == 0.25
    assert summary["cpu_ms_per_routed"] == 30.0
    assert summary["p99_create_to_delivery_ms"] == 35
    assert summary["p99_webhook_ms"] == 9.0


def test_the_report_is_written_as_json(tmp_path: Any) -> None:
    results = {"options": {"quick": True}, "machine": report.machine_facts()}
    results["summary"] = report.summary(results)
    written = report.write(results, tmp_path)
    assert [path.name for path in written[:2]] == ["quick.json", "quick.md"]
    assert json.loads(written[0].read_text())["summary"]["max_routed_per_s"] is None
    assert "| max routed interactions/s (-) | - |" in written[1].read_text()


def test_quick_options_skip_the_long_parts() -> None:
    options = BenchOptions.quick_defaults(duration=2.0, skip=frozenset({"ceiling"}))
    assert options.duration == 2.0
    assert options.skip == {"ceiling", "scale", "sims", "replicas"}


def test_cli_parses_bench_options() -> None:
    args = build_parser().parse_args(["bench", "--rates", "5,10.5", "--skip", "scale", "--quick"])
    assert args.rates == (5.0, 10.5)
    assert args.skip == ["scale"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--rates", "5,-1"])


def test_parse_wrk_reads_the_scripts_line() -> None:
    line = 'BENCH_JSON {"requests": 10, "duration_us": 1000000, "wraps": 0}'
    assert parse_wrk(f"Running 1s test\n{line}\n")["requests"] == 10
    with pytest.raises(ValueError, match="no BENCH_JSON"):
        parse_wrk("Running 1s test\n")


# --- a phase's figures --------------------------------------------------------------------------


def _snapshot(at: float, cpu: float, statements: int, commits: int) -> Snapshot:
    return Snapshot(
        at=at,
        harmony_cpu=[cpu],
        postgres_cpu=None,
        machine=(0.0, 0.0),
        peers_cpu=0.0,
        sql={"statements": statements, "checkouts": 0, "commits": commits},
        commits=commits,
    )


def test_summarise_phase_counts_completions_in_the_window_and_latency_from_schedule() -> None:
    # Four arrivals, one a second from t=100; the first is warm-up.
    output = {
        "prefix": "p",
        "warmup_count": 1,
        "scheduled": [100.0, 101.0, 102.0, 103.0],
        "status": [202, 202, 429, 202],
        "answer_ms": [5.0, 6.0, 1.0, 8.0],
        "late": 0,
        "retry_after": {"429": 1},
        "cpu_ms": 4.0,
        "count_seconds": 4.0,
    }
    peer_stats = {
        "deliveries": {"p-0000000": 100.05, "p-0000001": 101.04},
        "completions": {"p-0000000": 100.1, "p-0000001": 101.1},
        "answer_ms": {"agent.selected": [3.0]},
        "statuses": {"agent.selected": {"200": 1, "409": 1}},
    }
    result = summarise_phase(
        rate=1.0,
        duration=2.0,
        window=(101.0, 103.0),
        outputs=[output],
        peer_stats=peer_stats,
        before=_snapshot(101.0, 1000.0, 100, 10),
        after=_snapshot(103.0, 1060.0, 150, 16),
    )
    assert result["offered"] == 3
    assert result["routed"] == 1  # p-0000000 completed before the window
    assert result["errors"] == {"429": 1}
    assert result["retry_after"] == {"429": 1}
    assert result["callback_errors"] == {"agent.selected": {"409": 1}}
    assert result["create_to_delivery_ms"]["p50"] is not None
    assert result["create_to_delivery_ms"]["n"] == 2  # one delivered, one (p-0000003) not
    assert result["undelivered"] == 1
    assert result["cpu_ms_per_routed"] == 60.0
    assert result["statements_per_routed"] == 50.0
    assert result["commits_per_routed"] == 6.0
    assert verdict(result).goodput == 0.5


def test_clone_sql_copies_every_column_with_overrides() -> None:
    sql = clone_sql("agents", ["id", "name", "profile"], {"id": "'a-' || g"}, "t.id = $1", 2, 5)
    assert sql == (
        'INSERT INTO "agents" ("id", "name", "profile") SELECT \'a-\' || g, t."name", '
        't."profile" FROM "agents" AS t, generate_series(2, 5) AS g WHERE t.id = $1'
    )


# --- signatures and requests --------------------------------------------------------------------


def test_webhook_key_signs_as_standard_webhooks_does() -> None:
    secret = new_secret()
    key = WebhookKey(secret)
    body = b'{"x":1}'
    at = datetime.fromtimestamp(1_700_000_000, UTC)
    assert key.headers("evt-1", 1_700_000_000, body) == Signer(secret).headers("evt-1", body, at)
    fresh = Signer(secret).headers("evt-2", body)
    assert key.verify("evt-2", fresh["webhook-timestamp"], fresh["webhook-signature"], body)
    assert not key.verify("evt-2", fresh["webhook-timestamp"], fresh["webhook-signature"], b"{}")
    assert not key.verify("evt-2", "not-a-number", fresh["webhook-signature"], body)


def test_created_events_alternate_channels_and_verify_with_harmonys_signer() -> None:
    secret = new_secret()
    config = LoadConfig(host="127.0.0.1", port=1, secret=secret, rate=1, duration=4, prefix="t")
    events = list(created_events(config, 4))
    signer = Signer(secret)
    channels = []
    for event_id, timestamp, signature, body in events:
        signer.verify(
            body,
            {
                "webhook-id": event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature,
            },
        )
        parsed = json.loads(body)
        assert parsed["id"] == event_id
        channels.append(parsed["data"]["channel"])
    assert channels == ["chat", "email", "chat", "email"]
    with pytest.raises(SignatureError):
        signer.verify(
            events[1][3],
            {"webhook-id": events[0][0], "webhook-timestamp": "1", "webhook-signature": "v1,x"},
        )
    assert len(build_requests(config)) == 4


def test_request_file_has_one_tab_separated_line_per_event(tmp_path: Any) -> None:
    path = tmp_path / "requests.tsv"
    write_requests(path, new_secret(), 3, "w")
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    route, event_id, _, signature, body = lines[0].split("\t")
    assert route == "/v1/crm/generic/events"
    assert json.loads(body)["id"] == event_id
    assert signature.startswith("v1,")


# --- the peers and the generator on loopback ----------------------------------------------------


@dataclass
class FakeHarmony:
    """Records what the peers post and answers with the next scripted status (else 202)."""

    secrets: dict[str, str]
    posted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    port: int = 0
    clients: list[Peers] = field(default_factory=list)

    def handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> bytes:
        kind = "acd" if "/acd/" in path else "crm"
        key = WebhookKey(self.secrets[kind])
        assert key.verify(
            headers[b"webhook-id"].decode(),
            headers[b"webhook-timestamp"].decode(),
            headers[b"webhook-signature"].decode(),
            body,
        )
        event = json.loads(body)
        self.posted.append((event["type"], event["data"]))
        statuses = self.script.get(event["type"])
        status = statuses.pop(0) if statuses else 202
        return response_bytes(status)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for posted_kind, data in self.posted if posted_kind == kind]


@pytest.fixture
async def harmony() -> AsyncIterator[FakeHarmony]:
    fake = FakeHarmony({"acd": new_secret(), "crm": new_secret()})
    connections: list[HttpServerProtocol] = []

    def accept() -> HttpServerProtocol:
        connections.append(HttpServerProtocol(fake.handle))
        return connections[-1]

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    async with server:
        yield fake
        for peers in fake.clients:
            peers.close()
        for connection in connections:
            connection.close()
        await asyncio.sleep(0)


def _peers(harmony: FakeHarmony, agents: list[str], capacity: int = 2) -> Peers:
    peers = Peers(
        PeerConfig(
            harmony_host="127.0.0.1",
            harmony_ports=[harmony.port],
            acd_secret=harmony.secrets["acd"],
            crm_secret=harmony.secrets["crm"],
            acd_agents=agents,
            capacity={"chat": capacity, "email": capacity},
        )
    )
    harmony.clients.append(peers)
    return peers


def _send(peers: Peers, side: str, kind: str, data: dict[str, Any], secret: str) -> int:
    body = json.dumps({"id": f"h-{kind}", "type": kind, "occurred_at": "x", "data": data}).encode()
    headers = {
        name.encode(): value.encode()
        for name, value in WebhookKey(secret).headers(f"h-{kind}", 1_700_000_000, body).items()
    }
    answer = peers.handle("POST", f"/{side}/events", headers, body)
    return int(answer.split(b" ", 2)[1])


async def _settled(peers: Peers) -> None:
    for _ in range(200):
        if not peers.stats()["in_flight"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the peers never settled")


async def test_acd_selects_round_robin_and_crm_accepts_then_completes(
    harmony: FakeHarmony,
) -> None:
    peers = _peers(harmony, ["acd-1", "acd-2"])
    acd, crm = harmony.secrets["acd"], harmony.secrets["crm"]
    for number in (1, 2, 3):
        data = {"request_id": f"r{number}", "channel": "chat"}
        assert _send(peers, "acd", "routing.requested", data, acd) == 200
    await _settled(peers)
    assert [s["agent_id"] for s in harmony.of("agent.selected")] == ["acd-1", "acd-2", "acd-1"]
    assert _send(peers, "crm", "interaction.deliver", {"external_id": "e1"}, crm) == 200
    await _settled(peers)
    assert [kind for kind, _ in harmony.posted[-2:]] == [
        "interaction.accepted",
        "interaction.completed",
    ]
    stats = peers.stats()
    assert set(stats["deliveries"]) == {"e1"}
    assert set(stats["completions"]) == {"e1"}
    assert stats["counts"]["acd:routing.requested"] == 3


async def test_acd_waits_for_work_ended_when_every_agent_is_full(harmony: FakeHarmony) -> None:
    peers = _peers(harmony, ["acd-1"], capacity=1)
    acd = harmony.secrets["acd"]
    _send(peers, "acd", "routing.requested", {"request_id": "r1", "channel": "email"}, acd)
    _send(peers, "acd", "routing.requested", {"request_id": "r2", "channel": "email"}, acd)
    await _settled(peers)
    assert [s["request_id"] for s in harmony.of("agent.selected")] == ["r1"]
    assert peers.stats()["waiting_for_agent"] == 1
    ended = {"request_id": "r1", "agent_id": "acd-1", "channel": "email"}
    assert _send(peers, "acd", "work.ended", ended, acd) == 200
    await _settled(peers)
    assert [s["request_id"] for s in harmony.of("agent.selected")] == ["r1", "r2"]


async def test_a_refused_selection_moves_on_to_the_next_agent(harmony: FakeHarmony) -> None:
    harmony.script["agent.selected"] = [409]
    peers = _peers(harmony, ["acd-1", "acd-2"])
    _send(
        peers,
        "acd",
        "routing.requested",
        {"request_id": "r1", "channel": "chat"},
        harmony.secrets["acd"],
    )
    await _settled(peers)
    assert [s["agent_id"] for s in harmony.of("agent.selected")] == ["acd-1", "acd-2"]


async def test_transient_answers_are_retried(harmony: FakeHarmony) -> None:
    harmony.script["interaction.accepted"] = [503]
    peers = _peers(harmony, ["acd-1"])
    _send(peers, "crm", "interaction.deliver", {"external_id": "e1"}, harmony.secrets["crm"])
    await _settled(peers)
    assert len(harmony.of("interaction.accepted")) == 2
    assert peers.stats()["statuses"]["interaction.accepted"] == {"503": 1, "202": 1}


async def test_peers_refuse_a_bad_signature_and_hold_mode_selects_nobody(
    harmony: FakeHarmony,
) -> None:
    peers = _peers(harmony, ["acd-1"])
    data = {"request_id": "r1", "channel": "chat"}
    assert _send(peers, "acd", "routing.requested", data, new_secret()) == 401
    peers.mode = "hold"
    assert _send(peers, "acd", "routing.requested", data, harmony.secrets["acd"]) == 200
    await _settled(peers)
    assert harmony.of("agent.selected") == []
    assert peers.stats()["counts"]["bad_signature"] == 1


async def test_generator_sends_every_arrival_and_records_each_answer(
    harmony: FakeHarmony,
) -> None:
    harmony.script["interaction.created"] = [429]
    config = LoadConfig(
        host="127.0.0.1",
        port=harmony.port,
        secret=harmony.secrets["crm"],
        rate=2000,
        duration=0.005,
        warmup=0.0,
        prefix="g",
    )
    requests = build_requests(config)
    record = await run_phase(config, requests, time.time())
    assert sorted(record.status) == [202] * (len(requests) - 1) + [429]
    assert sorted(d["external_id"] for d in harmony.of("interaction.created")) == [
        f"g-{i:07d}" for i in range(len(requests))
    ]
