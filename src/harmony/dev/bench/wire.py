"""Cheap HTTP/1.1 on loopback for the benchmark's peers and load generator.

The benchmark measures Harmony's CPU on a machine whose cores Harmony shares with PostgreSQL,
the peers and the load generator, so what drives Harmony must cost little: raw asyncio protocols
with the ``httptools`` parser (the one uvicorn uses), pre-built request bytes, keep-alive
connections and plain ``hmac`` for Standard Webhooks signatures. Nothing here is general: no
TLS, no chunked request bodies, no redirects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

__all__ = [
    "ClientPool",
    "HttpServerProtocol",
    "Reply",
    "WebhookKey",
    "build_request",
    "encode_json",
    "response_bytes",
]


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as every body of the benchmark is sent."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookKey:
    """Standard Webhooks HMAC-SHA256 with one ``whsec_`` secret, without the library's overhead."""

    def __init__(self, secret: str) -> None:
        self._key = base64.b64decode(secret.removeprefix("whsec_"))

    def signature(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` header value for ``body`` sent as ``message_id``."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three signature headers."""
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(message_id, timestamp, body),
        }

    def verify(self, message_id: str, timestamp: str, signature: str, body: bytes) -> bool:
        """True if one of the space-separated ``v1,`` signatures matches."""
        try:
            wanted = self.signature(message_id, int(timestamp), body)
        except ValueError:
            return False
        return any(hmac.compare_digest(wanted, given) for given in signature.split())


def build_request(
    host: str, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
) -> bytes:
    """One complete HTTP/1.1 request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    if body or method == "POST":
        lines.append("content-type: application/json")
        lines.append(f"content-length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response_bytes(status: int, body: bytes = b"{}") -> bytes:
    """One complete HTTP/1.1 response with a JSON body."""
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized"}.get(
        status, "Status"
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Reply:
    """What came back for one request: status 0 means the connection failed."""

    status: int
    body: bytes = b""
    retry_after: str | None = None


class _ClientConnection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: ClientPool, keep_body: bool) -> None:
        self._pool = pool
        self._keep_body = keep_body
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self._body: list[bytes] = []
        self._retry_after: str | None = None
        self._header: bytes = b""
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._body.append(body)

    def on_message_complete(self) -> None:
        reply = Reply(self._parser.get_status_code(), b"".join(self._body), self._retry_after)
        self._body = []
        self._retry_after = None
        waiter, self._waiter = self._waiter, None
        if not self._parser.should_keep_alive():
            self._close()
        else:
            self._pool._idle.append(self)
            self._pool._wake_one()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        """Write ``request``; the future resolves with its reply (status 0 if the link fails)."""
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiter

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool._open -= 1
            if self._transport is not None:
                self._transport.close()

    def _fail(self) -> None:
        self._close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Reply(0))


@dataclass
class ClientPool:
    """Keep-alive connections to one ``host:port``, one request in flight per connection.

    ``request`` takes an idle connection, else opens one while fewer than ``limit`` are open,
    else waits for one to come back; ``try_send`` never waits (the load generator's open loop).
    """

    host: str
    port: int
    limit: int = 64
    keep_body: bool = False
    _idle: deque[_ClientConnection] = field(default_factory=deque)
    _open: int = 0
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    connections_opened: int = 0

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _take_idle(self) -> _ClientConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self) -> _ClientConnection:
        self._open += 1
        self.connections_opened += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _ClientConnection(self, self.keep_body), self.host, self.port
            )
        except OSError:
            self._open -= 1
            self._wake_one()
            raise
        return conn

    def can_send_now(self) -> bool:
        """An idle connection is there, or another may be opened."""
        return any(not c.closed for c in self._idle) or self._open < self.limit

    async def request(self, data: bytes) -> Reply:
        """Send one pre-built request and wait for its reply (status 0: connection failed)."""
        while True:
            conn = self._take_idle()
            if conn is not None:
                break
            if self._open < self.limit:
                try:
                    conn = await self._connect()
                except OSError:
                    return Reply(0)
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        reply = await conn.send(data)
        if reply.status == 0:
            self._wake_one()
        return reply

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop()._close()


Handler = Callable[[str, str, dict[bytes, bytes], bytes], bytes]


class HttpServerProtocol(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server connection that hands each complete request to ``handler``
    (method, path, lower-cased headers, body) and writes the bytes it returns at once."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(response_bytes(400, b'{"error":"malformed"}'))
                self._transport.close()

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        path = self._url.decode("latin-1").split("?", 1)[0]
        answer = self._handler(method, path, self._headers, b"".join(self._body))
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)
            if not self._parser.should_keep_alive():
                self._transport.close()
