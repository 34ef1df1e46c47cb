"""What every adapter shares: the error tree, HTTP error mapping, the inbound contract and the
registry.

AdapterError
├── TransientAdapterError     retry later (network error, 408, 425, 429, 5xx)
└── PermanentAdapterError     retrying the same message cannot help (other 4xx)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from harmony.errors import NotFound
from harmony.routing.commands import InboundEvent
from harmony.routing.messages import OutboundMessage, TargetKind

RETRYABLE_STATUS = frozenset({408, 425, 429})


class SignatureError(Exception):
    """An inbound request's signature headers are missing, stale or do not match the body."""


class AdapterError(Exception):
    """An outbound call to a CRM or ACD did not succeed."""


class TransientAdapterError(AdapterError):
    """The call may succeed if retried; ``retry_after`` is the receiver's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentAdapterError(AdapterError):
    """The receiver refused the message; sending it again unchanged cannot help."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Map a non-2xx answer to the adapter error tree."""
    if response.is_success:
        return
    summary = f"{what}: HTTP {response.status_code} {response.text[:300]}"
    if response.status_code in RETRYABLE_STATUS or response.status_code >= 500:
        raise TransientAdapterError(summary, _retry_after(response))
    raise PermanentAdapterError(summary)


@contextmanager
def transport_errors(what: str) -> Iterator[None]:
    """Turn httpx's network and timeout errors into TransientAdapterError."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransientAdapterError(f"{what}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise TransientAdapterError(f"{what}: {type(exc).__name__}: {exc}") from exc


class Adapter(Protocol):
    """An adapter as the registry, the API and the relay see it.

    Inbound, the API asks it in this order: ``check_content_type`` (415), ``verify_inbound``
    (401), ``parse_inbound`` (400 unreadable, 422 invalid). How the peer's requests look (JSON
    envelopes, form posts, one event or several) is the adapter's business; what comes out is a
    command of ``harmony.routing.commands``.
    """

    kind: TargetKind
    name: str

    def check_content_type(self, headers: Mapping[str, str]) -> None:
        """Raise UnsupportedMediaType unless the request's body is a kind this adapter reads."""
        ...

    def verify_inbound(self, body: bytes, headers: dict[str, str]) -> None:
        """Raise SignatureError unless the request really came from this peer."""
        ...

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> InboundEvent:
        """The verified request as an event for the inbox and its command; raise BadRequest
        or ValidationFailed naming the problem."""
        ...

    def parse_stored(self, payload: str) -> InboundEvent:
        """An event the inbox stored from ``parse_inbound``, parsed again to re-drive it."""
        ...

    async def send(self, message: OutboundMessage) -> None:
        """Deliver one outbound message; raise an AdapterError subclass on failure."""
        ...


class AdapterRegistry:
    """Configured adapters by (kind, name), built once in the application lifespan."""

    def __init__(self) -> None:
        self._adapters: dict[tuple[TargetKind, str], Adapter] = {}

    def register(self, adapter: Adapter) -> None:
        """Add an adapter; a second one with the same kind and name is a configuration error."""
        key = (adapter.kind, adapter.name)
        if key in self._adapters:
            raise ValueError(f"adapter {adapter.kind}:{adapter.name} registered twice")
        self._adapters[key] = adapter

    def get(self, kind: TargetKind, name: str) -> Adapter:
        """The adapter, or NotFound (``unknown_adapter``) naming the configured ones."""
        try:
            return self._adapters[(kind, name)]
        except KeyError:
            known = sorted(n for k, n in self._adapters if k == kind)
            raise NotFound(
                f"no {kind.value} adapter named '{name}' (configured: {', '.join(known)})",
                code="unknown_adapter",
            ) from None
