"""The generic CRM and ACD adapters, with respx standing in for the peer at the HTTP boundary."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx
from standardwebhooks.webhooks import Webhook

from harmony.adapters import generic_http
from harmony.adapters.base import (
    AdapterError,
    PermanentAdapterError,
    TransientAdapterError,
)
from harmony.adapters.generic_http import GenericHttpAdapter
from harmony.adapters.generic_http.protocol import Envelope, encode, envelope
from harmony.adapters.generic_http.signing import SignatureError, Signer, new_secret
from harmony.config import AdapterSettings
from harmony.routing.messages import (
    AGENT_STATE,
    INTERACTION_DELIVER,
    INTERACTION_FALLBACK,
    OFFER_DECLINED,
    OFFER_RESCINDED,
    OFFER_TIMED_OUT,
    REQUEST_CANCELLED,
    ROUTING_REQUESTED,
    WORK_ENDED,
    OutboundMessage,
    TargetKind,
)

SECRET = new_secret()
CRM_URL = "http://crm.test"
ACD_URL = "http://acd.test/harmony/"  # a base path and a trailing slash
CRM_EVENTS = "http://crm.test/events"
ACD_EVENTS = "http://acd.test/harmony/events"

DELIVER = OutboundMessage(
    target_kind=TargetKind.CRM,
    target="generic",
    type=INTERACTION_DELIVER,
    interaction_id="i-1",
    payload={
        "interaction_id": "i-1",
        "external_id": "chat-1",
        "channel": "chat",
        "queue": "support-chat",
        "agent_id": "crm-7",
    },
)
ROUTING = OutboundMessage(
    target_kind=TargetKind.ACD,
    target="generic",
    type=ROUTING_REQUESTED,
    interaction_id="i-1",
    payload={
        "request_id": "rr_1",
        "interaction_id": "i-1",
        "channel": "chat",
        "queue": "support-chat",
        "priority": 3,
        "skills": ["support"],
        "customer": {"name": "Ann", "tags": ["vip", "ü"]},
        "subject": None,
        "received_at": "2026-01-01T09:00:00+00:00",
    },
)
ENDED = OutboundMessage(
    target_kind=TargetKind.ACD,
    target="generic",
    type=WORK_ENDED,
    interaction_id="i-1",
    payload={
        "request_id": "rr_1",
        "interaction_id": "i-1",
        "agent_id": "acd-7",
        "channel": "chat",
        "reason": "completed",
    },
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def peer() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def crm(client: httpx.AsyncClient) -> GenericHttpAdapter:
    settings = AdapterSettings(url=CRM_URL, secret=SECRET, timeout_seconds=2.5)  # type: ignore[arg-type]
    return generic_http.create_crm("generic", settings, client)


@pytest.fixture
def acd(client: httpx.AsyncClient) -> GenericHttpAdapter:
    settings = AdapterSettings(url=ACD_URL, secret=SECRET)  # type: ignore[arg-type]
    return generic_http.create_acd("main-acd", settings, client)


def sent_envelope(request: httpx.Request) -> dict[str, object]:
    body = json.loads(request.content)
    assert isinstance(body, dict)
    return body


async def test_the_crm_adapter_posts_one_signed_envelope_to_events(
    crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    route = peer.post(CRM_EVENTS).mock(return_value=httpx.Response(202))

    await crm.send(DELIVER)

    [call] = route.calls
    request = call.request
    body = sent_envelope(request)
    assert body["id"] == DELIVER.id
    assert body["type"] == INTERACTION_DELIVER
    assert body["data"] == DELIVER.payload
    parsed = Envelope.model_validate(body)
    assert parsed.occurred_at.utcoffset() == timedelta(0)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == DELIVER.id
    assert request.headers["webhook-id"] == DELIVER.id
    # The peer's view: Harmony's own verifier and the reference library both accept it.
    Signer(SECRET).verify(request.content, dict(request.headers))
    Webhook(SECRET).verify(request.content, dict(request.headers))
    with pytest.raises(SignatureError):
        Signer(new_secret()).verify(request.content, dict(request.headers))


async def test_the_acd_adapter_posts_under_its_base_path(
    acd: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    route = peer.post(ACD_EVENTS).mock(return_value=httpx.Response(200, json={"ok": True}))

    await acd.send(ROUTING)
    await acd.send(ENDED)

    first, second = (sent_envelope(call.request) for call in route.calls)
    assert (first["type"], first["data"]) == (ROUTING_REQUESTED, ROUTING.payload)
    assert (second["type"], second["data"]) == (WORK_ENDED, ENDED.payload)
    assert first["id"] == ROUTING.id and second["id"] == ENDED.id
    for call in route.calls:
        Signer(SECRET).verify(call.request.content, dict(call.request.headers))


async def test_a_retried_message_keeps_its_envelope_id(
    crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    route = peer.post(CRM_EVENTS).mock(side_effect=[httpx.Response(503), httpx.Response(202)])
    with pytest.raises(TransientAdapterError):
        await crm.send(DELIVER)
    await crm.send(DELIVER)

    ids = [
        (sent_envelope(c.request)["id"], c.request.headers["idempotency-key"]) for c in route.calls
    ]
    assert ids == [(DELIVER.id, DELIVER.id), (DELIVER.id, DELIVER.id)]


async def test_the_configured_timeout_is_applied_to_the_request(
    crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    route = peer.post(CRM_EVENTS).mock(return_value=httpx.Response(204))
    await crm.send(DELIVER)
    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_any_2xx_is_success(
    status: int, crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    route = peer.post(CRM_EVENTS).mock(return_value=httpx.Response(status))
    await crm.send(DELIVER)
    assert sent_envelope(route.calls.last.request)["id"] == DELIVER.id


async def test_429_with_retry_after_seconds_is_transient_with_the_hint(
    crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    peer.post(CRM_EVENTS).mock(
        return_value=httpx.Response(429, headers={"retry-after": "7"}, text="slow down")
    )
    with pytest.raises(TransientAdapterError) as caught:
        await crm.send(DELIVER)
    assert caught.value.retry_after == 7.0
    assert "429" in str(caught.value) and "slow down" in str(caught.value)
    assert "interaction.deliver to crm:generic" in str(caught.value)


async def test_429_with_an_http_date_retry_after_is_converted_to_seconds(
    crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    later = datetime.now(UTC) + timedelta(minutes=2)
    peer.post(CRM_EVENTS).mock(
        return_value=httpx.Response(429, headers={"retry-after": format_datetime(later, True)})
    )
    with pytest.raises(TransientAdapterError) as caught:
        await crm.send(DELIVER)
    assert caught.value.retry_after is not None
    assert 60 < caught.value.retry_after <= 120


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("soon", None), ("", None), ("-5", 0.0)],  # never a negative wait
)
async def test_429_without_a_usable_retry_after_is_transient_without_a_hint(
    header: str | None, expected: float | None, crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    headers = {"retry-after": header} if header is not None else {}
    peer.post(CRM_EVENTS).mock(return_value=httpx.Response(429, headers=headers))
    with pytest.raises(TransientAdapterError) as caught:
        await crm.send(DELIVER)
    assert caught.value.retry_after == expected


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504])
async def test_server_errors_and_timeouts_are_transient(
    status: int, crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    peer.post(CRM_EVENTS).mock(return_value=httpx.Response(status, text="oops"))
    with pytest.raises(TransientAdapterError) as caught:
        await crm.send(DELIVER)
    assert f"HTTP {status}" in str(caught.value)
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
async def test_other_4xx_are_permanent(
    status: int, crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    peer.post(CRM_EVENTS).mock(
        return_value=httpx.Response(status, json={"error": "validation_error", "detail": "x"})
    )
    with pytest.raises(PermanentAdapterError) as caught:
        await crm.send(DELIVER)
    assert f"HTTP {status}" in str(caught.value)
    assert "validation_error" in str(caught.value)


async def test_a_long_error_body_is_cut_short_in_the_error(
    crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    peer.post(CRM_EVENTS).mock(return_value=httpx.Response(400, text="x" * 10_000))
    with pytest.raises(PermanentAdapterError) as caught:
        await crm.send(DELIVER)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("peer closed"),
    ],
)
async def test_network_errors_are_transient(
    error: httpx.TransportError, crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    peer.post(CRM_EVENTS).mock(side_effect=error)
    with pytest.raises(TransientAdapterError) as caught:
        await crm.send(DELIVER)
    assert caught.value.__cause__ is error
    assert type(error).__name__ in str(caught.value)


@pytest.mark.parametrize(
    "error", [httpx.ConnectTimeout("slow connect"), httpx.ReadTimeout("slow read")]
)
async def test_timeouts_are_transient(
    error: httpx.TimeoutException, crm: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    peer.post(CRM_EVENTS).mock(side_effect=error)
    with pytest.raises(TransientAdapterError, match="timed out") as caught:
        await crm.send(DELIVER)
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    ("adapter_name", "message"),
    [("crm", ROUTING), ("crm", ENDED), ("acd", DELIVER)],
)
async def test_an_adapter_refuses_message_types_it_does_not_carry(
    adapter_name: str,
    message: OutboundMessage,
    crm: GenericHttpAdapter,
    acd: GenericHttpAdapter,
    peer: respx.MockRouter,
) -> None:
    adapter = {"crm": crm, "acd": acd}[adapter_name]
    crm_route = peer.post(CRM_EVENTS).mock(return_value=httpx.Response(202))
    acd_route = peer.post(ACD_EVENTS).mock(return_value=httpx.Response(202))

    with pytest.raises(PermanentAdapterError) as caught:
        await adapter.send(message)

    assert message.type in str(caught.value)
    assert crm_route.calls == [] and acd_route.calls == []


async def test_both_adapters_carry_agent_state(
    crm: GenericHttpAdapter, acd: GenericHttpAdapter, peer: respx.MockRouter
) -> None:
    crm_route = peer.post(CRM_EVENTS).mock(return_value=httpx.Response(202))
    acd_route = peer.post(ACD_EVENTS).mock(return_value=httpx.Response(202))
    state = {"agent_id": "x-7", "channel": "chat", "state": "ready", "load": 0, "capacity": 2}
    for adapter, kind in ((crm, TargetKind.CRM), (acd, TargetKind.ACD)):
        await adapter.send(OutboundMessage(kind, adapter.name, AGENT_STATE, "", dict(state)))

    for route in (crm_route, acd_route):
        [call] = route.calls
        body = sent_envelope(call.request)
        assert (body["type"], body["data"]) == (AGENT_STATE, state)
        Signer(SECRET).verify(call.request.content, dict(call.request.headers))


def test_adapters_declare_their_kind_and_name(
    crm: GenericHttpAdapter, acd: GenericHttpAdapter
) -> None:
    assert (crm.kind, crm.name) == (TargetKind.CRM, "generic")
    assert (acd.kind, acd.name) == (TargetKind.ACD, "main-acd")


def test_verify_inbound_accepts_the_peers_signature_and_refuses_others(
    crm: GenericHttpAdapter,
) -> None:
    body = encode(envelope("interaction.created", {"external_id": "chat-1"}))
    crm.verify_inbound(body, Signer(SECRET).headers("evt_1", body))
    with pytest.raises(SignatureError):
        crm.verify_inbound(body, Signer(new_secret()).headers("evt_1", body))
    with pytest.raises(SignatureError):
        crm.verify_inbound(body + b" ", Signer(SECRET).headers("evt_1", body))


def test_adapter_errors_form_one_tree() -> None:
    assert issubclass(TransientAdapterError, AdapterError)
    assert issubclass(PermanentAdapterError, AdapterError)


@pytest.mark.parametrize(
    ("kind", "message_type"),
    [
        (TargetKind.ACD, OFFER_DECLINED),
        (TargetKind.ACD, OFFER_TIMED_OUT),
        (TargetKind.ACD, OFFER_RESCINDED),
        (TargetKind.ACD, REQUEST_CANCELLED),
        (TargetKind.CRM, OFFER_RESCINDED),
        (TargetKind.CRM, INTERACTION_FALLBACK),
    ],
)
async def test_the_adapters_carry_what_the_unhappy_paths_send(
    kind: TargetKind,
    message_type: str,
    crm: GenericHttpAdapter,
    acd: GenericHttpAdapter,
    peer: respx.MockRouter,
) -> None:
    adapter, url = (acd, ACD_EVENTS) if kind == TargetKind.ACD else (crm, CRM_EVENTS)
    route = peer.post(url).mock(return_value=httpx.Response(202))
    data = {"interaction_id": "i-1", "request_id": "rr_1"}

    await adapter.send(OutboundMessage(kind, adapter.name, message_type, "i-1", data))

    [call] = route.calls
    assert (sent_envelope(call.request)["type"], sent_envelope(call.request)["data"]) == (
        message_type,
        data,
    )
