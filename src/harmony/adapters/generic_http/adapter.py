"""The adapter speaking the generic protocol: signed envelopes both ways."""

from __future__ import annotations

import httpx

from harmony.adapters.base import PermanentAdapterError, raise_for_status, transport_errors
from harmony.adapters.generic_http.protocol import envelope, post_event
from harmony.adapters.generic_http.signing import Signer
from harmony.config import AdapterSettings
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
    ) -> None:
        self.kind = kind
        self.name = name
        self._url = str(settings.url).rstrip("/") + "/events"
        self._timeout = settings.timeout_seconds
        self._signer = Signer(settings.secret)
        self._client = client
        self._accepts = accepts

    def verify_inbound(self, body: bytes, headers: dict[str, str]) -> None:
        """Check the Standard Webhooks signature with this adapter's secret."""
        self._signer.verify(body, headers)

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
