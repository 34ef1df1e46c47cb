"""The one page-cursor codec: opaque to callers, strictly checked when it comes back.

A cursor is base64url of compact JSON ``[kind, key...]``. ``kind`` names the listing, so a cursor
from one listing is refused by another; every key is checked for exactly the type and range this
module wrote (an id that is a string without NUL, a history id in 1..2^63-1, a time with offset
in Harmony's own range). Anything else is ``400 invalid_cursor``, never a 500 further down.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from harmony.errors import BadRequest, InvalidCursor
from harmony.inputs import EARLIEST, INT64_MAX, LATEST, check_text, parse_json

__all__ = [
    "agent_cursor",
    "history_cursor",
    "interaction_cursor",
    "read_agent_cursor",
    "read_history_cursor",
    "read_interaction_cursor",
]

MAX_CURSOR_LENGTH = 500
_REFUSED = "cursor: not a cursor this API returned; pass next_cursor back unchanged"


def _encode(kind: str, *key: Any) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(kind: str, cursor: str, arity: int) -> list[Any]:
    try:
        if len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
            raise ValueError("too long or not ASCII")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            raise ValueError("not canonical base64url")  # stray characters are ignored otherwise
        value = parse_json(raw)
    except (ValueError, BadRequest) as exc:  # binascii.Error is a ValueError
        raise InvalidCursor(_REFUSED) from exc
    if not isinstance(value, list) or len(value) != arity + 1 or value[0] != kind:
        raise InvalidCursor(_REFUSED)
    return value[1:]


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise InvalidCursor(_REFUSED)
    try:
        return check_text(value)
    except ValueError as exc:
        raise InvalidCursor(_REFUSED) from exc


def interaction_cursor(received_at: datetime, interaction_id: str) -> str:
    """After this interaction in (received_at, id) order."""
    return _encode("i", received_at.isoformat(), interaction_id)


def read_interaction_cursor(cursor: str) -> tuple[datetime, str]:
    """Reverse ``interaction_cursor``; ``InvalidCursor`` for anything it did not write."""
    at_text, interaction_id = _decode("i", cursor, 2)
    try:
        at = datetime.fromisoformat(_text(at_text))
    except ValueError as exc:
        raise InvalidCursor(_REFUSED) from exc
    if at.tzinfo is None or not EARLIEST.year <= at.year < LATEST.year:
        raise InvalidCursor(_REFUSED)
    return at, _text(interaction_id)


def agent_cursor(agent_id: str) -> str:
    """After this agent in id order."""
    return _encode("a", agent_id)


def read_agent_cursor(cursor: str) -> str:
    """Reverse ``agent_cursor``; ``InvalidCursor`` for anything it did not write."""
    (agent_id,) = _decode("a", cursor, 1)
    return _text(agent_id)


def history_cursor(entry_id: int) -> str:
    """After this agent-history entry."""
    return _encode("h", entry_id)


def read_history_cursor(cursor: str) -> int:
    """Reverse ``history_cursor``; ``InvalidCursor`` for anything it did not write."""
    (entry_id,) = _decode("h", cursor, 1)
    if type(entry_id) is not int or not 0 < entry_id <= INT64_MAX:
        raise InvalidCursor(_REFUSED)
    return entry_id
