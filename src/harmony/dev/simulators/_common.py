"""What the ACD and CRM simulators share: reading Harmony's signed events and posting their own.

Both simulators speak the same generic protocol (docs/protocol.md) from the other side of the
wire, so refusing a bad inbound message and retrying an outbound one must behave identically in
both; keeping that code here means a fix to one cannot miss the other. Only what really differs
(the inbound event types, names in logs and error texts) is passed in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from harmony.adapters.generic_http.protocol import MAX_BODY_BYTES, Envelope, envelope, post_event
from harmony.adapters.generic_http.signing import SignatureError, Signer
from harmony.errors import BadRequest
from harmony.inputs import describe_pydantic_errors
from harmony.inputs import parse_json as strict_json
from harmony.seed import Seed

log = structlog.get_logger()

# Status codes worth retrying unchanged besides 5xx: the protocol treats them as transient too.
TRANSIENT_4XX = frozenset({408, 425, 429})


# Agent states per channel, as Harmony names them.
LOGGED_OUT = "logged_out"
NOT_READY = "not_ready"
READY = "ready"
StateName = Literal["logged_out", "not_ready", "ready"]
ChannelName = Literal["voice", "chat", "email"]


# --- inbound events -------------------------------------------------------------------------


class AgentStateMessage(BaseModel):
    """``data`` of ``agent.state``: Harmony's view of one agent channel, sent to the ACD and CRM.

    ``agent_id`` is the receiver's own id for the agent.
    """

    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(min_length=1, max_length=200)
    channel: ChannelName
    state: StateName
    reason: str | None = Field(default=None, max_length=64)
    load: int = Field(default=0, ge=0)
    capacity: int = Field(default=0, ge=0)
    busy: bool = False
    wrap_up_until: AwareDatetime | None = None
    presence: str | None = None
    # A not ready or log out waiting for the channel's work to end: offer nothing meanwhile.
    pending_state: StateName | None = None
    pending_reason: str | None = Field(default=None, max_length=64)
    # When Harmony applied the change, and its place among this agent's mirrors to this peer:
    # a receiver applies only a sequence newer than the last it applied (absent: apply).
    changed_at: AwareDatetime | None = None
    sequence: int | None = Field(default=None, ge=0, le=2**63 - 1)


class SequenceGuard:
    """The last sequence applied per key (an agent and channel): refuses what is not newer, so a
    mirror that overtook another one does not undo it."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def admit(self, key: tuple[str, str], sequence: int | None) -> bool:
        """True, recording ``sequence``, if it is newer than the last admitted for ``key``."""
        if sequence is None:
            return True
        last = self._last.get(key)
        if last is not None and sequence <= last:
            return False
        self._last[key] = sequence
        return True


class EventError(Exception):
    """An inbound message is refused; carries the protocol's status and error code."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> JSONResponse:
        """Render as the protocol's ``{"error", "detail"}`` body."""
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Summarise pydantic errors naming each offending field, in Harmony's own wording."""
    return describe_pydantic_errors(list(exc.errors()), prefix)


def parse_json(body: bytes) -> Any:
    """Parse a body as strictly as Harmony does, or raise the protocol's 400."""
    try:
        return strict_json(body)
    except BadRequest as exc:
        raise EventError(400, exc.code, exc.detail) from exc


async def read_event(
    request: Request,
    signer: Signer,
    models: Mapping[str, type[BaseModel]],
    peer: str,
) -> tuple[Envelope, BaseModel]:
    """Verify, parse and validate one inbound envelope; raise ``EventError`` if it is refused.

    ``models`` maps each event type the simulator accepts to the model of its ``data``; any
    other type is refused with a 422 naming ``peer`` (the receiver with its article, such as
    ``"an ACD"``). The signature is checked over the raw bytes before anything is parsed, so an
    unsigned body never reaches the JSON parser.
    """
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise EventError(
            413, "body_too_large", f"body is {len(body)} bytes, limit {MAX_BODY_BYTES}"
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise EventError(415, "unsupported_media_type", "content-type must be application/json")
    try:
        signer.verify(body, dict(request.headers))
    except SignatureError as exc:
        raise EventError(401, "invalid_signature", str(exc)) from exc
    raw = parse_json(body)
    try:
        message = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise EventError(422, "validation_error", describe_validation_error(exc)) from exc
    if message.id != request.headers.get("webhook-id"):
        raise EventError(422, "validation_error", "id: must equal the webhook-id header")
    model = models.get(message.type)
    if model is None:
        raise EventError(
            422, "validation_error", f"type: unknown event type {message.type!r} for {peer}"
        )
    try:
        data = model.model_validate(message.data)
    except ValidationError as exc:
        raise EventError(422, "validation_error", describe_validation_error(exc, "data")) from exc
    return message, data


# --- outbound events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """Harmony's final answer to one event we sent; ``status`` is None if it was never reached."""

    status: int | None
    error: str | None = None
    detail: str | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True for any 2xx."""
        return self.status is not None and 200 <= self.status < 300


def answer_from(response: httpx.Response) -> Answer:
    """Read status and the protocol's error fields from a response, tolerating any body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    error = body.get("error")
    detail = body.get("detail")
    return Answer(
        status=response.status_code,
        error=error if isinstance(error, str) else None,
        detail=detail if isinstance(detail, str) else None,
        body=body,
    )


def is_transient(answer: Answer) -> bool:
    """Whether the same message should be sent again: no answer, 5xx or a transient 4xx."""
    return answer.status is None or answer.status >= 500 or answer.status in TRANSIENT_4XX


@dataclass
class SimConfig:
    """What every simulator is configured with: where Harmony is, the shared secret, the seed,
    the adapter name Harmony knows it by, and how its own posts are retried."""

    harmony_url: str
    secret: str
    seed: Seed
    adapter: str = "generic"
    retry_attempts: int = 5
    retry_base_delay: float = 0.2
    retry_max_delay: float = 5.0
    request_timeout: float = 10.0


ConfigT = TypeVar("ConfigT", bound=SimConfig)


class SimulatorBase(Generic[ConfigT]):
    """Outbound HTTP client, retried signed posts and background tasks of one simulator.

    ``name`` ("ACD", "CRM") appears in errors and ``log_prefix`` ("acd_sim") starts every log
    event, so each simulator still reports under the names it always used. Events go to
    ``post_url``; ``retry_event`` names the log event written before each retry.
    """

    def __init__(
        self, config: ConfigT, *, name: str, log_prefix: str, post_url: str, retry_event: str
    ) -> None:
        self.config = config
        self.signer = Signer(config.secret)
        self._name = name
        self.log_prefix = log_prefix
        self._post_url = post_url
        self._retry_event = retry_event
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle

    async def start(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """Open the outbound HTTP client; ``transport`` replaces the network in tests."""
        self._client = httpx.AsyncClient(transport=transport, timeout=self.config.request_timeout)

    async def stop(self) -> None:
        """Cancel background work and close the client; posts in flight are abandoned."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background, keeping a reference so it is not garbage collected."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # Nobody awaits these tasks, so an exception would otherwise vanish without a trace.
        if not task.cancelled() and task.exception() is not None:
            log.error(f"{self.log_prefix}.task_failed", exc_info=task.exception())

    # -- outbound

    async def _post(self, event_type: str, data: dict[str, Any]) -> Answer:
        """Send one event, retrying network errors and 5xx with the same envelope id."""
        if self._client is None:
            raise RuntimeError(f"the {self._name} simulator is not started")
        # One id for every attempt so Harmony de-duplicates a retry of a message it did store.
        message = envelope(event_type, data)
        delay = self.config.retry_base_delay
        answer = Answer(status=None, error="unreachable")
        for attempt in range(1, self.config.retry_attempts + 1):
            try:
                response = await post_event(self._client, self._post_url, self.signer, message)
            except httpx.HTTPError as exc:
                answer = Answer(status=None, error="unreachable", detail=str(exc) or repr(exc))
            else:
                answer = answer_from(response)
                if not is_transient(answer):
                    return answer
            if attempt < self.config.retry_attempts:
                log.warning(
                    f"{self.log_prefix}.{self._retry_event}",
                    type=event_type,
                    attempt=attempt,
                    status=answer.status,
                    detail=answer.detail,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_delay)
        return answer


# --- HTTP app -------------------------------------------------------------------------------


ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_body(request: Request, model: type[ModelT]) -> ModelT:
    """A simulator's own control request (``/simulate/...``) as ``model``; else ``EventError``."""
    try:
        return model.model_validate(parse_json(await request.body()))
    except ValidationError as exc:
        raise EventError(422, "validation_error", describe_validation_error(exc)) from exc


def simulator_app(
    title: str,
    sim: SimulatorBase[Any],
    transport: httpx.AsyncBaseTransport | None,
    *,
    inbound: Mapping[str, type[BaseModel]],
    peer: str,
    handle: Callable[[Envelope, BaseModel], Awaitable[dict[str, Any]]],
    snapshot: Callable[[], Awaitable[dict[str, Any]]],
) -> FastAPI:
    """A simulator's app: ``sim`` started and stopped with the lifespan, ``/healthz``,
    ``POST /events`` (Harmony's signed events, checked against ``inbound`` and passed to
    ``handle``, refusals logged and answered in the protocol's error shape) and ``GET /state``.

    ``peer`` names the receiver in errors (``"an ACD"``). ``sim`` is also put on
    ``app.state.sim`` so tests and tools can reach it; the caller adds its ``/simulate`` routes.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await sim.start(transport)
        try:
            yield
        finally:
            await sim.stop()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.sim = sim

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        """Receive one signed event from Harmony."""
        try:
            message, data = await read_event(request, sim.signer, inbound, peer)
        except EventError as exc:
            log.warning(f"{sim.log_prefix}.event_refused", status=exc.status, error=exc.error)
            return exc.response()
        return JSONResponse(await handle(message, data), status_code=202)

    @app.get("/state")
    async def state() -> JSONResponse:
        """The simulator's whole in-memory state."""
        return JSONResponse(await snapshot())

    return app
