"""Request plumbing: request ids, the body-size limit, strict JSON, and one error shape for
every failure, including the last-resort 500."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harmony.api.admission import Overloaded
from harmony.api.schemas import ErrorBody
from harmony.errors import HarmonyError, Refused, UnsupportedMediaType
from harmony.inputs import describe_validation, parse_json
from harmony.routing.ids import random_hex

log = structlog.get_logger("harmony.api")

__all__ = [
    "BodyLimitMiddleware",
    "RequestIdMiddleware",
    "StrictJsonRoute",
    "error_response",
    "errors",
    "install_error_handlers",
    "overloaded_response",
]


def _printable(text: str, limit: int = 2000) -> str:
    # Details quote the input; a lone surrogate in it would make the answer itself unencodable.
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    state: str | None = None,
) -> JSONResponse:
    """The one error body: ``{"error", "detail"}``, plus ``request_id`` on 5xx answers and the
    interaction's current ``state`` when the lifecycle refused an event."""
    body: dict[str, str] = {"error": code, "detail": _printable(detail)}
    if state is not None:
        body["state"] = state
    if status >= 500:
        body["request_id"] = request_id or structlog.contextvars.get_contextvars().get(
            "request_id", ""
        )
    return JSONResponse(body, status_code=status, headers=headers)


def json_response(content: dict[str, Any]) -> Response:
    """A read's answer written straight from plain values (``fields_of`` of its response
    model) by pydantic's serialiser: FastAPI would build the response model from them and
    validate it, which cost more than the whole query for a page of agents. The values come
    from typed domain objects; the route keeps ``response_model`` for the document, and unit
    tests hold each ``fields_of`` to what its model writes."""
    return Response(pydantic_core.to_json(content), media_type="application/json")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each with the error body."""
    return {status: {"model": ErrorBody, "description": _MEANING[status]} for status in statuses}


_MEANING = {
    400: "the body is not strict UTF-8 JSON (`malformed_json`) or the cursor is not one this "
    "API returned (`invalid_cursor`)",
    401: "signature missing, stale or wrong (`invalid_signature`)",
    404: "names something Harmony does not hold (`unknown_...`)",
    409: "valid, but not in the current state (the code names the rule; a refusal of the "
    "lifecycle table also gives the interaction's `state`)",
    413: "body over 256 KiB (`body_too_large`)",
    415: "content type is not application/json (`unsupported_media_type`)",
    422: "a field is missing, of the wrong type or out of range (`validation_error`, naming the "
    "field), or names a queue, profile or reason Harmony does not hold",
    503: "the database does not answer (`not_ready`), or it aborted the transaction after "
    "repeated deadlocks (`try_again`: nothing was stored, the request may be repeated)",
}


def overloaded_response() -> dict[str, Any]:
    """OpenAPI for the 503 of an inbound event route: the database's answers, and admission
    control's ``overloaded`` with its ``Retry-After``."""
    return {
        "model": ErrorBody,
        "description": "Harmony cannot take the event now (`overloaded`: every slot is "
        "taken, or, for `interaction.created`, outbound messages wait too long for the relay; "
        "nothing was stored, send it again after `Retry-After` seconds), or the database "
        "aborted the transaction after repeated deadlocks (`try_again`: nothing was stored, "
        "the request may be repeated)",
        "headers": {
            "Retry-After": {
                "description": "with `overloaded`: seconds to wait before sending again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }


class StrictJsonRoute(APIRoute):
    """A route whose JSON body is parsed strictly (``harmony.inputs.parse_json``) before
    FastAPI validates it: no NaN, no 5,000-digit integers, no 10,000-level nesting."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict_handler(request: Request) -> Response:
            strict = _StrictJsonRequest(request.scope, request.receive)
            content_type = strict.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "application/json":
                raise UnsupportedMediaType(
                    f"content-type must be application/json, not '{content_type[:100]}'"
                )
            await strict.json()  # raises BadRequest here, outside FastAPI's generic 400
            return await handler(strict)

        return strict_handler


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = parse_json(await self.body())
        return self._strict_json


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body_too_large", f"request body exceeds {self.limit} bytes")
        await response(scope, receive, send)


class RequestIdMiddleware:
    """Bind a request id (the caller's ``x-request-id`` or a new one) to every log line, and
    be the last resort: any exception that escapes the app or a middleware inside this one is
    logged with its traceback and answered ``500 {"error": "internal", ...}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        # Tokens, not ``bound_contextvars``, which copies every context variable to save them.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                log.exception(
                    "unhandled_error",
                    method=scope.get("method"),
                    path=_printable(str(scope.get("path", "")), 200),
                    error=type(exc).__name__,
                )
                if started:  # the answer is half sent: all that is left is to end it
                    return
                response = error_response(
                    500,
                    "internal",
                    "an unexpected error; it is logged with this request id",
                    request_id=request_id,
                )
                await response(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given: str = value.decode("latin-1")[:100]
            # Echoed in a header and in log lines: printable ASCII only.
            if given and given.isascii() and given.isprintable():
                return given
    # Random bytes read in batches: a uuid4 per request would be a system call each.
    return random_hex()


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to ``{"error": code, "detail": text}`` with the right status."""

    @app.exception_handler(HarmonyError)
    async def harmony_error(_: Request, exc: HarmonyError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("harmony_error", error=exc.code, detail=exc.detail)
        state = exc.state if isinstance(exc, Refused) else None
        return error_response(exc.status_code, exc.code, exc.detail, state=state)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        # Not logged per request: under overload that would cost what refusing saves
        # (admission logs a count every few seconds instead).
        return error_response(
            exc.status_code, exc.code, exc.detail, headers={"retry-after": str(exc.retry_after)}
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "request body is not valid JSON")
        return error_response(422, "validation_error", describe_validation(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=dict(exc.headers or {}),  # 405 carries Allow
        )
