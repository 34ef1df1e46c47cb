"""The adapter speaking the generic protocol: signed envelopes both ways."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from harmony.adapters.base import (
    PermanentAdapterError,
    raise_for_status,
    transport_errors,
)
from harmony.adapters.generic_http.inbound import EventType, read_event
from harmony.adapters.generic_http.protocol import envelope, post_event
from harmony.adapters.generic_http.signing import Signer
from harmony.config import AdapterSettings
from harmony.errors import UnsupportedMediaType
from harmony.inputs import require_utf8
from harmony.routing.agents import Reporter
from harmony.routing.commands import InboundEvent
from harmony.routing.messages import OutboundMessage, TargetKind


class GenericHttpAdapter:
    """Posts signed envelopes to ``{url}/events`` and verifies the peer's signed events."""

    def __init__(
        self,
        kind: TargetKind,
        name: str,
        settings: AdapterSettings,
        client: httpx.AsyncClient,
        accepts: frozenset[str],
        events: Mapping[str, EventType],
    ) -> None:
        self.kind = kind
        self.name = name
        # Parsed once: httpx would parse the string again on every send.
        self._url = httpx.URL(str(settings.url).rstrip("/") + "/events")
        self._timeout = settings.timeout_seconds
        self._signer = Signer(settings.secret)
        self._client = client
        self._accepts = accepts
        self._events = events
        self._sender = Reporter(kind, name)

    def check_content_type(self, headers: Mapping[str, str]) -> None:
        """The protocol's bodies are JSON."""
        content_type = headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(
                f"content-type must be application/json, not '{content_type}'"
            )

    def verify_inbound(self, body: bytes, headers: dict[str, str]) -> None:
        """Check the Standard Webhooks signature with this adapter's secret; a body that is not
        UTF-8 is refused first (400), since the signature is computed over text."""
        require_utf8(body)
        self._signer.verify(body, headers)

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> InboundEvent:
        """One signed envelope; its id must equal the ``webhook-id`` header that was signed."""
        return read_event(
            require_utf8(body), self._events, self._sender, headers.get("webhook-id", "")
        )

    def parse_stored(self, payload: str) -> InboundEvent:
        """An envelope kept by the inbox, read again with today's schemas."""
        return read_event(payload, self._events, self._sender, None)

    async def send(self, message: OutboundMessage) -> None:
        """POST the message as an envelope whose id is the outbox message id."""
        if message.type not in self._accepts:
            raise PermanentAdapterError(
                f"{self.kind.value}:{self.name} does not take {message.type}"
            )
        what = f"{message.type} to {self.kind.value}:{self.name}"
        with transport_errors(what):
            response = await post_event(
                self._client,
                self._url,
                self._signer,
                envelope(message.type, message.payload, event_id=message.id),
                timeout=self._timeout,
            )
        raise_for_status(response, what)
