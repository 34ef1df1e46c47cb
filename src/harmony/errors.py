"""Harmony's exception tree. Every error a caller can cause maps to one HTTP answer.

    HarmonyError                      500 internal
    ├── BadRequest                    400 (malformed_json, ...)
    │   └── InvalidCursor             400 invalid_cursor
    ├── ValidationFailed              422 validation_error
    ├── NotFound                      404 (code names the thing: unknown_interaction, ...)
    ├── Conflict                      409 (code names the rule: invalid_transition, ...)
    │   └── Refused                   409 (code names the lifecycle's refusal; body has state)
    ├── Unauthorized                  401 invalid_signature
    ├── UnsupportedMediaType          415 unsupported_media_type
    └── TryAgain                      503 try_again (contention outlasted the retries)

``Collided`` is not among them: a use case's fast path raises it and its careful path catches
it, so it never reaches a caller.

The API's single exception handler turns these into ``{"error": code, "detail": ...}``; any
other exception is logged with its traceback and answered ``500 {"error": "internal", "detail":
..., "request_id": ...}`` (api.plumbing.RequestIdMiddleware).
"""

from __future__ import annotations


class HarmonyError(Exception):
    """Base of every error Harmony raises on purpose."""

    status_code = 500
    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadRequest(HarmonyError):
    """Input cannot even be read (not JSON, wrong content type)."""

    status_code = 400
    code = "bad_request"


class InvalidCursor(BadRequest):
    """A page cursor that this API did not hand out."""

    code = "invalid_cursor"


class ValidationFailed(HarmonyError):
    """Input is well-formed JSON but breaks a rule (unknown queue, wrong channel...)."""

    status_code = 422
    code = "validation_error"


class NotFound(HarmonyError):
    """Input names something Harmony does not hold."""

    status_code = 404
    code = "not_found"


class Conflict(HarmonyError):
    """Input is valid but cannot apply to the current state."""

    status_code = 409
    code = "conflict"


class Refused(Conflict):
    """The lifecycle table refuses this event in the interaction's current state."""

    def __init__(self, detail: str, *, code: str, state: str) -> None:
        super().__init__(detail, code=code)
        self.state = state


class Unauthorized(HarmonyError):
    """The sender could not be authenticated."""

    status_code = 401
    code = "invalid_signature"


class TryAgain(HarmonyError):
    """The database broke a deadlock or a serialization conflict by aborting this transaction.

    Nothing was stored; the same command in a fresh unit of work may succeed, which
    ``harmony.routing.retry`` does a few times before letting this reach the caller.
    """

    status_code = 503
    code = "try_again"


class UnsupportedMediaType(HarmonyError):
    """A request's content type is not one its reader takes (application/json here)."""

    status_code = 415
    code = "unsupported_media_type"


class Collided(Exception):
    """A one-write unit of work's write met a row already stored (a repeated event, a CRM id
    seen before) or another constraint: nothing of the unit of work was stored. Not a
    HarmonyError: the use case that asked for one write runs its careful path instead."""
