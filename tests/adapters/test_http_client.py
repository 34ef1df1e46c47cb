"""The outbound client on real loopback sockets: what a peer receives, and every way a peer can
fail a send reaching the relay as a transient adapter error (to retry), never as a bug."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from harmony.adapters import generic_http
from harmony.adapters.base import PermanentAdapterError, TransientAdapterError
from harmony.adapters.generic_http import GenericHttpAdapter
from harmony.adapters.generic_http.signing import new_secret
from harmony.adapters.http_client import outbound_client
from harmony.config import AdapterSettings
from harmony.routing.messages import INTERACTION_DELIVER, OutboundMessage, TargetKind

SECRET = new_secret()
DELIVER = OutboundMessage(
    target_kind=TargetKind.CRM,
    target="generic",
    type=INTERACTION_DELIVER,
    interaction_id="i-1",
    payload={"interaction_id": "i-1", "external_id": "chat-ü", "agent_id": "crm-7"},
)

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Peer:
    """A loopback HTTP peer whose behaviour each test sets; it records what it received."""

    reply: Reply | None = None
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            assert self.reply is not None
            await self.reply(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return head, body


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, str]]:
    state = Peer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield state, f"http://127.0.0.1:{port}"


@pytest.fixture
async def crm(peer: tuple[Peer, str]) -> AsyncIterator[GenericHttpAdapter]:
    _, url = peer
    client = outbound_client(4, "harmony/test")
    settings = AdapterSettings(url=url, secret=SECRET, timeout_seconds=0.5)  # type: ignore[arg-type]
    try:
        yield generic_http.create_crm("generic", settings, client)
    finally:
        await client.aclose()


def answer(state: Peer, status: int, body: bytes = b"{}") -> Reply:
    """A keep-alive peer answering every request with ``status``."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await state.read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (status, len(body), body)
            )
            await writer.drain()

    return reply


async def test_a_send_posts_the_signed_envelope_and_reuses_the_connection(
    crm: GenericHttpAdapter, peer: tuple[Peer, str]
) -> None:
    state, _ = peer
    state.reply = answer(state, 200)

    await crm.send(DELIVER)
    await crm.send(DELIVER)

    assert len(state.requests) == 2
    assert state.connections == 1  # kept alive
    head, body = state.requests[0]
    assert head.startswith(b"POST /events HTTP/1.1\r\n")
    headers = {
        name.strip().lower().decode(): value.strip().decode()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    }
    assert headers["user-agent"] == "harmony/test"
    assert headers["content-type"] == "application/json"
    sent = json.loads(body)
    assert sent["id"] == DELIVER.id
    assert sent["type"] == INTERACTION_DELIVER
    assert sent["data"]["external_id"] == "chat-ü"
    # The signature verifies with the shared secret over exactly the bytes that arrived.
    Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, TransientAdapterError), (500, TransientAdapterError), (400, PermanentAdapterError)],
)
async def test_the_status_decides_between_retry_and_give_up(
    crm: GenericHttpAdapter, peer: tuple[Peer, str], status: int, error: type[Exception]
) -> None:
    state, _ = peer
    state.reply = answer(state, status, b'{"error": "no"}')

    with pytest.raises(error):
        await crm.send(DELIVER)
    assert len(state.requests) == 1


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"this is not HTTP at all\r\n\r\n")
    await writer.drain()


async def _truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}")
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(5)


@pytest.mark.parametrize(
    "reply",
    [_hang_up, _garbage, _truncated, _silent],
    ids=["closes-without-answer", "not-http", "truncated-body", "never-answers"],
)
async def test_a_peer_failing_the_exchange_is_a_transient_error(
    crm: GenericHttpAdapter, peer: tuple[Peer, str], reply: Reply
) -> None:
    state, _ = peer
    state.reply = reply

    with pytest.raises(TransientAdapterError):
        await crm.send(DELIVER)


async def test_nobody_listening_is_a_transient_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = outbound_client(4, "harmony/test")
    settings = AdapterSettings(url=f"http://127.0.0.1:{port}", secret=SECRET)  # type: ignore[arg-type]
    try:
        with pytest.raises(TransientAdapterError):
            await generic_http.create_crm("generic", settings, client).send(DELIVER)
    finally:
        await client.aclose()


async def test_a_given_transport_replaces_the_network() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={})

    client = outbound_client(4, "harmony/test", httpx.MockTransport(handler))
    settings = AdapterSettings(url="http://crm.test", secret=SECRET)  # type: ignore[arg-type]
    try:
        await generic_http.create_crm("generic", settings, client).send(DELIVER)
    finally:
        await client.aclose()
    assert [str(r.url) for r in seen] == ["http://crm.test/events"]


@pytest.mark.parametrize("seconds", [2.5, None])
async def test_a_direct_post_sends_what_the_clients_post_sends(seconds: float | None) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, headers={"retry-after": "7"}, content=b'{"error":"busy"}')

    transport = httpx.MockTransport(handler)
    lean = outbound_client(4, "harmony/test", transport)
    usual = httpx.AsyncClient(transport=transport, headers={"user-agent": "harmony/test"})
    url = httpx.URL("http://acd.test:8080/events")
    body = json.dumps({"id": "evt_1", "data": {"name": "Zoë"}}).encode()
    headers = {"content-type": "application/json", "webhook-id": "evt_1"}
    try:
        direct = await lean.post_direct(url, body, headers, seconds)
        through = await usual.post(
            url, content=body, headers=headers, timeout=seconds or httpx.USE_CLIENT_DEFAULT
        )
    finally:
        await lean.aclose()
        await usual.aclose()
    first, second = seen
    assert (first.method, first.url, first.content) == (second.method, second.url, second.content)
    assert first.headers.multi_items() == second.headers.multi_items()
    assert first.extensions["timeout"] == second.extensions["timeout"]
    for response in (direct, through):
        assert (response.status_code, response.headers["retry-after"]) == (503, "7")
        assert response.content == b'{"error":"busy"}'
        assert response.request.url == url
