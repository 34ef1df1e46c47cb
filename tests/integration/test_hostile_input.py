"""Every route, fed what a hostile client sends: no 5xx, one error shape, nothing stored changes.

Routes come from ``app.routes``, so a route added later is swept too. Each input is built to be
invalid where it lands (a NUL in a string, 2^63 in a bounded integer, year 1 in a date...), so
every answer must be a 4xx ``{"error", "detail"}`` body, and the database must be byte for byte
what it was. Event bodies are signed with the adapter's secret so that they reach validation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.routing import Route

from harmony.adapters.generic_http.protocol import (
    AGENT_LOGGED_IN,
    AGENT_LOGGED_OUT,
    AGENT_LOGIN_FAILED,
    AGENT_SELECTED,
    AGENT_STATE_CHANGED,
    INTERACTION_ACCEPTED,
    INTERACTION_COMPLETED,
    INTERACTION_CREATED,
    REQUEST_QUEUED,
    VOICE_ENDED,
    VOICE_STARTED,
)
from harmony.config import DEV_SECRET
from harmony.db.tables import metadata
from tests.conftest import Harness

DEEP = 10_000
HUGE_INT = "1" + "0" * 5_000
TWO_63 = str(2**63)

# JSON texts that are invalid wherever they are put: in a string, a number, a date or an object.
ANYWHERE = [
    '"\\u0000"',
    '"a\\u0000b"',
    '"\\ud800"',
    '"x\\udfff"',
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    TWO_63,
    str(-(2**63) - 1),
    HUGE_INT,
    "[" * DEEP + "]" * DEEP,
    '{"a":' * DEEP + "1" + "}" * DEEP,
]
# Invalid where a bounded integer is expected (a string of digits would be read as a number).
AS_INTEGER = [
    '"\u0661\u0662"',
    '"\u00b2"',
    '"\uff11"',
    "1e30",
    "9.5",
    f'"{TWO_63}"',
    f'"{HUGE_INT}"',
]
AS_DATE = [
    '"0001-01-01T00:00:00+01:00"',
    '"0001-01-01T00:30:00+23:59"',
    '"9999-12-31T23:59:59-01:00"',
    '"9999-12-31T23:59:59+00:00"',
    '"1900-01-01T00:00:00Z"',
    '"2026-01-01T00:00:00+99:00"',
    '"\uff12\uff10\uff12\uff16-01-01T00:00:00Z"',
    '"2026-01-01T00:00:00"',
    "1e30",
    TWO_63,
]
# Raw bytes for query and path values, already percent-encoded.
URL_STRINGS = ["%00", "a%00b", "x" * 5_000]
URL_INTEGERS = [
    "%D9%A1%D9%A2",  # Arabic-Indic digits
    "%C2%B2",  # superscript two
    "%EF%BC%91",  # fullwidth one
    TWO_63,
    HUGE_INT,
    "1e30",
    "NaN",
    "-1",
    "0",
    "%00",
    "10000000",
]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CURSORS = [
    _b64("²".encode()),
    _b64(b"\xc2\xb2"),
    _b64(TWO_63.encode()),
    _b64(str(-1).encode()),
    _b64(HUGE_INT[:300].encode()),
    _b64(b"\x00"),
    _b64(b"\xff\xfe"),
    _b64(b'["9999-12-31T23:59:59-23:59", "x"]'),
    _b64(b'["0001-01-01T00:00:00+23:59", "x"]'),
    _b64(b'["2026-01-01T00:00:00+00:00", "\\ud800"]'),
    _b64(b'["2026-01-01T00:00:00+00:00", "a\\u0000"]'),
    _b64(b'["2026-01-01T00:00:00", "x"]'),
    _b64(b"[1, 2]"),
    _b64(b'{"a": 1}'),
    _b64(b"[NaN, 1e400]"),
    _b64(b"[" * 100 + b"]" * 100),
    _b64(b'"x"'),
    "!!!!",
    "%00",
    "a",
    "a" * 500,
]

AGENT = {"crm": "crm-001", "acd": "acd-001"}
# A valid body for each event type: every hostile variant differs from it in one place only.
EVENT_DATA: dict[str, dict[str, Any]] = {
    INTERACTION_CREATED: {
        "external_id": "hostile-new",
        "channel": "chat",
        "queue": "support-chat",
        "priority": 1,
        "skills": ["support"],
        "customer": {"name": "Ann", "tags": ["vip"], "account": {"id": 7}},
        "subject": "hello",
    },
    INTERACTION_ACCEPTED: {"external_id": "chat-known", "agent_id": "crm-001"},
    INTERACTION_COMPLETED: {"external_id": "chat-known"},
    AGENT_LOGGED_IN: {"agent_id": "crm-001", "channels": ["chat"], "state": "ready", "sequence": 9},
    AGENT_LOGGED_OUT: {"agent_id": "crm-001", "channels": ["email"], "sequence": 9},
    AGENT_STATE_CHANGED: {
        "agent_id": "crm-001",
        "channels": ["chat"],
        "state": "not_ready",
        "reason": "break",
        "sequence": 9,
        "echo_of": "evt-x",
    },
    AGENT_SELECTED: {"request_id": "rr_x", "agent_id": "acd-001"},
    REQUEST_QUEUED: {"request_id": "rr_x", "position": 2},
    AGENT_LOGIN_FAILED: {"agent_id": "acd-001", "channels": ["voice"], "reason": "refused"},
    VOICE_STARTED: {"agent_id": "acd-001", "call_id": "call-1", "sequence": 9},
    VOICE_ENDED: {"agent_id": "acd-001", "call_id": "call-1", "wrap_up_seconds": 5},
}
CRM_TYPES = [
    INTERACTION_CREATED,
    INTERACTION_ACCEPTED,
    INTERACTION_COMPLETED,
    AGENT_LOGGED_IN,
    AGENT_LOGGED_OUT,
    AGENT_STATE_CHANGED,
]
ACD_TYPES = [
    AGENT_SELECTED,
    REQUEST_QUEUED,
    AGENT_LOGGED_OUT,
    AGENT_STATE_CHANGED,
    AGENT_LOGIN_FAILED,
    VOICE_STARTED,
    VOICE_ENDED,
]
INTEGER_FIELDS = {"priority", "position", "sequence", "wrap_up_seconds"}

# A valid body for each operator write, keyed by path template.
PUT_BODIES: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "/v1/agents/{agent_id}": (
        {"agent_id": "agent-new"},
        {
            "name": "Zed",
            "crm_agent_id": "crm-new",
            "acd_agent_id": "acd-new",
            "skills": ["support"],
            "profile": "blended-chat3",
            "capacity": {"chat": 2, "voice": 1},
        },
    ),
    "/v1/agents/{agent_id}/state": (
        {"agent_id": "agent-001"},
        {"channel": "chat", "state": "not_ready", "reason": "break"},
    ),
    "/v1/profiles/{name}": (
        {"name": "hostile-profile"},
        {
            "capacity": {"voice": 1, "chat": 2, "email": 1},
            "wrap_up_seconds": {"voice": 5},
            "blocks": {"voice": ["chat"]},
        },
    ),
    "/v1/queues/{name}": ({"name": "hostile-queue"}, {"channel": "chat", "skills": ["support"]}),
}
PATH_DEFAULTS = {
    "adapter": "generic",
    "agent_id": "agent-001",
    "name": "support-chat",
    "interaction_id": "0b6c54f2-0000-4000-8000-000000000000",
    "source": "crm:generic",
    "event_id": "evt-not-in-the-inbox",
}


@dataclass
class Probe:
    method: str
    path: str
    what: str
    body: bytes | None = None
    headers: dict[str, str] | None = None
    must_refuse: bool = True


def sign_bytes(event_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers over raw bytes, which need not be UTF-8 (content-type too)."""
    key = base64.b64decode(DEV_SECRET.removeprefix("whsec_"))
    timestamp = str(int(time.time()))
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position in a JSON value where a hostile value can be put, containers included."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))


MARK = "\u2603hostile\u2603"


def _with_raw(value: Any, path: tuple[Any, ...], raw: str) -> bytes:
    """``value`` as JSON with the text ``raw`` at ``path`` (raw may not be serialisable)."""
    copy = json.loads(json.dumps(value))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = MARK
    return json.dumps(copy).replace(json.dumps(MARK), raw).encode()


def _hostile_for(path: tuple[Any, ...]) -> list[str]:
    name = path[-1]
    if "customer" in path:  # free-form: any finite JSON value is fine there
        return ANYWHERE
    if name == "occurred_at":
        return ANYWHERE + AS_DATE
    if name in INTEGER_FIELDS or name in ("voice", "chat", "email"):
        return ANYWHERE + AS_INTEGER
    return ANYWHERE


def _event_probes(kind: str, path: str) -> Iterator[Probe]:
    types = CRM_TYPES if kind == "crm" else ACD_TYPES
    for event_type in types:
        data = dict(EVENT_DATA[event_type])
        if "agent_id" in data and event_type not in (INTERACTION_ACCEPTED, AGENT_SELECTED):
            data["agent_id"] = AGENT[kind]
        envelope = {"type": event_type, "occurred_at": "2026-01-01T00:00:00+00:00", "data": data}
        for leaf in _leaves(envelope):
            hostile = ANYWHERE if leaf == ("data",) else _hostile_for(leaf)
            for raw in hostile:
                event_id = f"evt_{uuid.uuid4().hex}"
                body = _with_raw({"id": event_id, **envelope}, leaf, raw)
                yield Probe(
                    "POST",
                    path,
                    f"{event_type} {leaf} = {raw[:40]}",
                    body,
                    sign_bytes(event_id, body),
                )
        # hostile object keys inside the free-form customer object
        if event_type == INTERACTION_CREATED:
            for key in ('"\\u0000"', '"\\ud800"'):
                event_id = f"evt_{uuid.uuid4().hex}"
                text = json.dumps({"id": event_id, **envelope})
                body = text.replace('"name": "Ann"', f'{key}: "Ann"').encode()
                yield Probe("POST", path, f"customer key {key}", body, sign_bytes(event_id, body))
    for raw in (
        b'{"id": "evt-raw", "type": "interaction.created", "data": {"external_id": "\xff"}}',
        b"\xef\xbb\xbf{}",
        b"\x80\x81",
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        HUGE_INT.encode(),
        b"NaN",
    ):
        yield Probe("POST", path, f"raw {raw[:30]!r}", raw, sign_bytes("evt-raw", raw))
    event_id = "evt-headers"
    body = json.dumps({"id": event_id, "type": INTERACTION_CREATED, "data": {}}).encode()
    for header, value in (
        ("webhook-timestamp", "1e30"),
        ("webhook-timestamp", "nan"),
        ("webhook-timestamp", TWO_63),
        ("webhook-timestamp", "١٢"),
        ("webhook-signature", "v1,!!!"),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,a,b"),
        ("content-type", "application/json; charset=ÿ"),
    ):
        headers = {**sign_bytes(event_id, body), header: value}
        yield Probe("POST", path, f"header {header}: {value}", body, headers)


def _body_probes(path: str, concrete: str) -> Iterator[Probe]:
    _, body = PUT_BODIES[path]
    headers = {"content-type": "application/json"}
    for leaf in _leaves(body):
        for raw in _hostile_for(leaf):
            yield Probe(
                "PUT", concrete, f"{leaf} = {raw[:40]}", _with_raw(body, leaf, raw), headers
            )
    for raw in (
        b"\xff\xfe",
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        HUGE_INT.encode(),
        b"NaN",
        json.dumps(body).encode().replace(b'"', b"'"),
    ):
        yield Probe("PUT", concrete, f"raw {raw[:30]!r}", raw, headers)


def _concrete(route: APIRoute, values: dict[str, str]) -> str:
    path = route.path
    for name in route.param_convertors:
        path = path.replace("{" + name + "}", values[name])
    return path


def all_routes(routes: list[Any]) -> Iterator[Any]:
    """Routes, with those of included routers (FastAPI keeps them behind a wrapper)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from all_routes(included.routes)
        else:
            yield route


def probes(app: Any) -> Iterator[Probe]:
    """Hostile requests for every route of ``app``."""
    for route in all_routes(app.routes):
        if not isinstance(route, Route):
            continue
        methods = sorted(route.methods or []) if not isinstance(route, APIRoute) else None
        if methods is not None:  # FastAPI's own docs routes: hostile query strings only
            for method in methods:
                if method == "HEAD":
                    continue
                for raw in URL_STRINGS + URL_INTEGERS:
                    yield Probe(method, f"{route.path}?x={raw}", "docs", must_refuse=False)
            continue
        assert isinstance(route, APIRoute)
        defaults = {**PATH_DEFAULTS, **PUT_BODIES.get(route.path, ({}, {}))[0]}
        for method in sorted(route.methods):
            base = _concrete(route, defaults)
            for name in route.param_convertors:
                for raw in URL_STRINGS:
                    hostile = _concrete(route, {**defaults, name: raw})
                    body = None if method == "GET" else b"{}"
                    headers = {"content-type": "application/json"}
                    yield Probe(method, hostile, f"path {name} = {raw[:20]}", body, headers)
            for param in route.dependant.query_params:
                is_int = param.field_info.annotation is int
                if param.name == "cursor":
                    values = CURSORS + URL_STRINGS
                elif is_int:
                    values = URL_INTEGERS
                else:
                    values = URL_STRINGS
                for raw in values:
                    yield Probe(
                        method, f"{base}?{param.name}={raw}", f"query {param.name}={raw[:30]}"
                    )
            if route.path.endswith("/events"):
                kind = route.path.split("/")[2]
                yield from _event_probes(kind, base)
            elif method == "PUT":
                yield from _body_probes(route.path, base)
    for method in ("DELETE", "PATCH", "POST"):
        yield Probe(method, "/v1/interactions", "method not allowed")


async def snapshot(h: Harness) -> dict[str, list[str]]:
    """Every row of every table."""
    async with h.container.db.engine.connect() as conn:
        result = {}
        for table in metadata.sorted_tables:
            rows = (await conn.execute(select(table))).mappings().all()
            result[table.name] = sorted(
                json.dumps(dict(r), sort_keys=True, default=str) for r in rows
            )
        return result


async def reads(h: Harness) -> dict[str, Any]:
    """What operators read, through the API."""
    answers = {}
    for path in ("/v1/interactions", "/v1/agents", "/v1/queues", "/v1/profiles", "/readyz"):
        response = await h.client.get(path)
        assert response.status_code == 200, (path, response.text)
        answers[path] = response.json()
    for queue in answers["/v1/queues"]:
        queue.pop("oldest_wait_seconds")  # grows with the clock
    interactions = answers["/v1/interactions"]["items"]
    for item in interactions:
        response = await h.client.get(f"/v1/interactions/{item['id']}")
        assert response.status_code == 200, response.text
    response = await h.client.get("/v1/agents/agent-001/history", params={"limit": 1})
    assert response.status_code == 200, response.text
    cursor = response.json()["next_cursor"]
    assert cursor
    assert (await h.client.get(f"/v1/agents/agent-001/history?cursor={cursor}")).status_code == 200
    return answers


def _is_error_body(text: str) -> bool:
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("detail"), str)
    )


async def test_signed_body_that_is_not_utf8_is_a_400(harness: Harness) -> None:
    before = await snapshot(harness)
    body = b'{"id": "evt-1", "type": "interaction.created", "data": {"external_id": "\xff"}}'
    response = await harness.client.post(
        "/v1/crm/generic/events", content=body, headers=sign_bytes("evt-1", body)
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_json"
    assert "UTF-8" in response.json()["detail"]
    assert await snapshot(harness) == before


async def test_hostile_input_to_every_route_is_refused_cleanly(harness: Harness) -> None:
    h = harness
    created = await h.create("chat-known")
    assert created.status_code == 202, created.text
    await h.drain()
    before_rows = await snapshot(h)
    before_reads = await reads(h)

    server_errors: list[str] = []
    wrong_shape: list[str] = []
    accepted: list[str] = []
    sent = 0
    # An exception escaping the app must be seen as the 500 a real server would answer.
    transport = httpx.ASGITransport(app=h.app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://harmony")
    for probe in probes(h.app):
        sent += 1
        headers = {k: v.encode() for k, v in (probe.headers or {}).items()}  # raw UTF-8 bytes
        response = await client.request(
            probe.method, probe.path, content=probe.body, headers=headers
        )
        label = f"{probe.method} {probe.path[:80]} [{probe.what}] -> {response.status_code}"
        if response.status_code >= 500:
            server_errors.append(f"{label}: {response.text[:200]}")
        elif response.status_code < 400:
            if probe.must_refuse:
                accepted.append(label)
        elif not _is_error_body(response.text):
            wrong_shape.append(f"{label}: {response.text[:100]}")
        if response.status_code == 405 and not response.headers.get("allow"):
            wrong_shape.append(f"{label}: no Allow header")

    report = (
        f"{sent} hostile requests: {len(server_errors)} answered 5xx, {len(accepted)} accepted, "
        f"{len(wrong_shape)} not the JSON error body"
    )
    print(report)
    assert not server_errors, report + "\n" + "\n".join(server_errors[:6000])
    assert not accepted, report + "\n" + "\n".join(accepted[:6000])
    assert not wrong_shape, report + "\n" + "\n".join(wrong_shape[:60])
    assert await snapshot(h) == before_rows
    assert await reads(h) == before_reads


@pytest.mark.parametrize("year", ["0001", "9999"])
async def test_envelope_dates_far_out_are_refused_not_stored(harness: Harness, year: str) -> None:
    before = await snapshot(harness)
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {
            "id": event_id,
            "type": AGENT_STATE_CHANGED,
            "occurred_at": f"{year}-12-31T23:59:59+00:00",
            "data": {"agent_id": "crm-001", "state": "not_ready", "reason": "break"},
        }
    ).encode()
    response = await harness.client.post(
        "/v1/crm/generic/events", content=body, headers=sign_bytes(event_id, body)
    )
    assert response.status_code == 422, response.text
    assert "occurred_at" in response.json()["detail"]
    assert await snapshot(harness) == before


FOREIGN_CURSORS = [
    _b64("²".encode()),
    _b64(TWO_63.encode()),
    _b64(b'["h", 9223372036854775808]'),
    _b64(b'["h", "12"]'),
    _b64(b'["i", "9999-12-31T23:59:59-23:59", "x"]'),
    _b64(b'["a", "agent-001"]'),  # an agents cursor, given to the history listing
    "a" * 500,
]


async def test_a_cursor_this_api_did_not_hand_out_is_400_invalid_cursor(harness: Harness) -> None:
    for cursor in FOREIGN_CURSORS:
        response = await harness.client.get(
            "/v1/agents/agent-001/history", params={"cursor": cursor, "limit": 1}
        )
        assert response.status_code == 400, (cursor, response.text)
        assert response.json()["error"] == "invalid_cursor"
    first = await harness.client.get("/v1/agents/agent-001/history", params={"limit": 1})
    handed_out = first.json()["next_cursor"]
    follow = await harness.client.get(
        "/v1/agents/agent-001/history", params={"cursor": handed_out, "limit": 1}
    )
    assert follow.status_code == 200
    assert follow.json()["items"] != first.json()["items"]
    wrong_listing = await harness.client.get("/v1/agents", params={"cursor": handed_out})
    assert wrong_listing.json()["error"] == "invalid_cursor"


async def test_an_unexpected_error_is_a_logged_json_500_with_the_request_id(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    interaction_id = (await harness.create("chat-before-drop")).json()["interaction_id"]
    # A table gone from under the app: the kind of failure no handler was written for.
    async with harness.container.db.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE interaction_history")
    capsys.readouterr()
    transport = httpx.ASGITransport(app=harness.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://harmony") as client:
        response = await client.get(
            f"/v1/interactions/{interaction_id}", headers={"x-request-id": "req-500-test"}
        )
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "detail": "an unexpected error; it is logged with this request id",
        "request_id": "req-500-test",
    }
    assert response.headers["x-request-id"] == "req-500-test"
    logged = capsys.readouterr().out
    assert "unhandled_error" in logged
    assert "Traceback" in logged
    assert "interaction_history" in logged


async def test_an_operator_body_streamed_past_the_limit_is_413(harness: Harness) -> None:
    before = await snapshot(harness)

    async def chunks() -> Any:
        yield b'{"channel": "chat", "skills": ["'
        for _ in range(300):
            yield b"x" * 1024
        yield b'"]}'

    response = await harness.client.put(
        "/v1/queues/streamed", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "body_too_large"
    assert await snapshot(harness) == before
