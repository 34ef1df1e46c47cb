"""Standard Webhooks signing and verification for every message Harmony sends or receives.

Wraps the ``standardwebhooks`` package so that any malformed header, bad base64 or stale
timestamp surfaces as one exception type, and so that outbound messages are signed the same way
by adapters and simulators.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from harmony.adapters.base import SignatureError

__all__ = ["SIGNATURE_HEADERS", "SignatureError", "Signer", "new_secret"]

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def new_secret() -> str:
    """Return a fresh random secret in the ``whsec_<base64>`` form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Signer:
    """Signs and verifies bodies with one shared secret (``whsec_...`` or raw base64)."""

    def __init__(self, secret: str) -> None:
        try:
            self._webhook = Webhook(secret)
        except Exception as exc:  # the library raises several types for a bad secret
            raise ValueError(f"invalid webhook secret: {exc}") from exc

    def headers(self, message_id: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
        """Return the three Standard Webhooks headers for ``body`` sent as ``message_id``."""
        # The library formats the time as if it were UTC: convert, or the signature breaks.
        timestamp = (at or datetime.now(UTC)).astimezone(UTC)
        signature = self._webhook.sign(message_id, timestamp, body.decode())
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
        }

    def verify(self, body: bytes, headers: dict[str, str]) -> None:
        """Raise ``SignatureError`` unless ``headers`` sign ``body`` within five minutes of now."""
        wanted = {k.lower(): v for k, v in headers.items() if k.lower() in SIGNATURE_HEADERS}
        missing = [name for name in SIGNATURE_HEADERS if not wanted.get(name)]
        if missing:
            raise SignatureError(f"missing header(s): {', '.join(missing)}")
        try:
            self._webhook.verify(body, wanted, json_parse=False)
        except Exception as exc:  # malformed base64 / header shapes raise non-library errors
            raise SignatureError(str(exc) or type(exc).__name__) from exc
