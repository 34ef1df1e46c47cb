"""What a CRM, an ACD or an operator asks of Harmony, typed, and the one table that handles it.

An adapter parses what its peer sends (JSON envelopes, form posts, streamed events: its own
business) into one of these commands; ``dispatch`` looks the command's type up in
``COMMAND_HANDLERS`` and runs its use case in a fresh unit of work. Adding an inbound event
type is a row in the adapter's parse table (``adapters/generic_http/inbound.py``) and, for a
new use case, a command here with a row in ``PLAIN_USE_CASES`` (fields named as the use case's
keywords) or ``COMMAND_HANDLERS``.

``dispatch`` opens the unit of work itself (from a factory) and is the one call that applies
a command, so it is the one place a retry of a deadlocked or serialisation-failed transaction
can wrap: every attempt gets a fresh unit of work, and the inbox claim inside the use case
makes an attempt that did commit answer ``duplicate`` instead of applying twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from harmony.errors import Conflict, HarmonyError, NotFound
from harmony.routing import agents, interactions, rerouting
from harmony.routing.agents import AgentOutcome, Reporter, StateReport
from harmony.routing.interactions import NewInteraction, Outcome
from harmony.routing.model import Channel
from harmony.routing.ports import (
    Clock,
    InboxStatus,
    ReceivedEvent,
    UnitOfWork,
    UnitOfWorkFactory,
)
from harmony.routing.retry import DEFAULT_RETRY

# --- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _FromCrm:
    """An event from a CRM adapter, by its id (the inbox de-duplicates on it)."""

    crm_adapter: str
    event_id: str


@dataclass(frozen=True, kw_only=True)
class _FromAcd:
    """An event from an ACD adapter, by its id (the inbox de-duplicates on it)."""

    acd_adapter: str
    event_id: str


@dataclass(frozen=True, kw_only=True)
class CreateInteraction(_FromCrm):
    """A CRM reports a new chat or email to route."""

    external_id: str
    channel: Channel
    queue: str
    priority: int = 0
    skills: tuple[str, ...] = ()
    customer: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None


@dataclass(frozen=True, kw_only=True)
class AcceptInteraction(_FromCrm):
    """The agent accepted delivered work in the CRM."""

    external_id: str
    crm_agent_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class CompleteInteraction(_FromCrm):
    """The agent finished the work in the CRM."""

    external_id: str


@dataclass(frozen=True, kw_only=True)
class DeclineInteraction(_FromCrm):
    """The agent declined offered work in the CRM."""

    external_id: str
    crm_agent_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class AbandonInteraction(_FromCrm):
    """The customer left (or, ``cancelled``, the CRM withdrew the work)."""

    external_id: str
    cancelled: bool = False


@dataclass(frozen=True, kw_only=True)
class TransferInteraction(_FromCrm):
    """The agent transfers accepted work to a queue or to another agent (by the CRM's id)."""

    external_id: str
    crm_agent_id: str | None = None
    queue: str | None = None
    to_crm_agent_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class SelectAgent(_FromAcd):
    """The ACD chose an agent for a routing request."""

    request_id: str
    acd_agent_id: str


@dataclass(frozen=True, kw_only=True)
class QueueRequest(_FromAcd):
    """The ACD holds a routing request until an agent frees up."""

    request_id: str
    position: int | None = None


@dataclass(frozen=True, kw_only=True)
class ReportAgentState:
    """A login, logout or readiness change reported by a CRM or an ACD."""

    reporter: Reporter
    event_id: str
    agent_ref: str
    report: StateReport


@dataclass(frozen=True, kw_only=True)
class LoginFailed(_FromAcd):
    """The ACD refused an agent's login."""

    acd_agent_id: str
    channels: tuple[Channel, ...] | None
    reason: str
    occurred_at: datetime


@dataclass(frozen=True, kw_only=True)
class _CallEvent(_FromAcd):
    """Something that happened to one voice call of one agent at the ACD."""

    acd_agent_id: str
    call_id: str
    occurred_at: datetime


@dataclass(frozen=True, kw_only=True)
class VoiceStarted(_CallEvent):
    """A call reached an agent at the ACD."""


@dataclass(frozen=True, kw_only=True)
class VoiceEnded(_CallEvent):
    """A call ended at the ACD."""

    wrap_up_seconds: int | None = None


Command = (
    CreateInteraction
    | AcceptInteraction
    | CompleteInteraction
    | DeclineInteraction
    | AbandonInteraction
    | TransferInteraction
    | SelectAgent
    | QueueRequest
    | ReportAgentState
    | LoginFailed
    | VoiceStarted
    | VoiceEnded
)
Result = Outcome | AgentOutcome

# Rows one pruning transaction removes at most, so it never holds many locks for long.
PRUNE_BATCH = 500


@dataclass(frozen=True)
class InboundEvent:
    """One event a peer sent, as its adapter parsed it: what the inbox stores and what to do.

    ``payload`` is the body exactly as verified (the inbox keeps it to show and re-drive it).
    """

    source: str
    event_id: str
    type: str
    occurred_at: datetime
    payload: str
    command: Command


@dataclass(frozen=True)
class Policy:
    """Deployment settings the use cases need besides the command itself."""

    acd_adapter: str
    not_ready_reasons: tuple[str, ...]
    # How long the inbox keeps an event; a delivery retried later than this is applied again.
    inbox_retention: timedelta = timedelta(days=7)


# --- handlers --------------------------------------------------------------------------------

Handler = Callable[[Any, UnitOfWorkFactory, Clock, Policy], Awaitable[Result]]


def _as_is(use_case: Callable[..., Awaitable[Result]]) -> Handler:
    """A handler for a command whose fields are exactly its use case's keyword arguments."""

    async def handle(command: Any, uows: UnitOfWorkFactory, clock: Clock, _: Policy) -> Result:
        arguments = {f.name: getattr(command, f.name) for f in fields(command)}
        return await use_case(uows(), clock, **arguments)

    return handle


async def _create(
    c: CreateInteraction, uows: UnitOfWorkFactory, clock: Clock, policy: Policy
) -> Outcome:
    new = NewInteraction(
        external_id=c.external_id,
        channel=c.channel,
        queue=c.queue,
        priority=c.priority,
        skills=list(c.skills),
        customer=c.customer,
        subject=c.subject,
    )
    return await interactions.receive_interaction(
        uows,
        clock,
        crm_adapter=c.crm_adapter,
        acd_adapter=policy.acd_adapter,
        event_id=c.event_id,
        new=new,
    )


async def _transfer(
    c: TransferInteraction, uows: UnitOfWorkFactory, clock: Clock, _: Policy
) -> Outcome:
    return await rerouting.transfer_interaction(
        uows(),
        clock,
        interaction_ref=c.external_id,
        target=rerouting.TransferTarget(queue=c.queue, crm_agent_id=c.to_crm_agent_id),
        by=f"crm:{c.crm_adapter}",
        crm_adapter=c.crm_adapter,
        event_id=c.event_id,
        crm_agent_id=c.crm_agent_id,
    )


async def _report_state(
    c: ReportAgentState, uows: UnitOfWorkFactory, clock: Clock, policy: Policy
) -> AgentOutcome:
    return await agents.report_state(
        uows(),
        clock,
        reporter=c.reporter,
        event_id=c.event_id,
        agent_ref=c.agent_ref,
        report=c.report,
        reasons=policy.not_ready_reasons,
        acd_adapter=policy.acd_adapter,
    )


# Commands whose fields are exactly their use case's keyword arguments (a unit test keeps the
# names in step), each handled by passing the fields through.
PLAIN_USE_CASES: dict[type[Any], Callable[..., Awaitable[Result]]] = {
    AcceptInteraction: interactions.accept_interaction,
    CompleteInteraction: interactions.complete_interaction,
    DeclineInteraction: rerouting.decline_interaction,
    AbandonInteraction: rerouting.abandon_interaction,
    SelectAgent: interactions.select_agent,
    QueueRequest: interactions.queue_request,
    LoginFailed: agents.login_failed,
    VoiceStarted: agents.voice_started,
    VoiceEnded: agents.voice_ended,
}
COMMAND_HANDLERS: dict[type[Any], Handler] = {
    CreateInteraction: _create,
    TransferInteraction: _transfer,
    ReportAgentState: _report_state,
    **{command: _as_is(use_case) for command, use_case in PLAIN_USE_CASES.items()},
}


async def dispatch(
    command: Command, uows: UnitOfWorkFactory, clock: Clock, policy: Policy
) -> Result:
    """Apply one command through its use case, in a unit of work of its own; a transaction the
    database aborted to break a deadlock (TryAgain) is run again in a new one."""
    handler = COMMAND_HANDLERS[type(command)]
    return await DEFAULT_RETRY.call(lambda: handler(command, uows, clock, policy))


async def receive(
    event: InboundEvent, uows: UnitOfWorkFactory, clock: Clock, policy: Policy
) -> Result:
    """Apply a verified event; its inbox row (with the payload) is written by the use case's
    claim in the same transaction, or with the refusal if the use case refuses it.

    Either way the event stays inspectable and, once a refusal's cause is fixed, re-drivable.
    A delivery already applied is answered as a duplicate by the use case's inbox claim.
    """
    received = ReceivedEvent(event.source, event.event_id, event.type, event.payload)

    def receiving() -> UnitOfWork:
        return uows().receiving(received)

    return await apply_recorded(
        event.source, event.event_id, event.command, receiving, clock, policy
    )


async def prune_inbox(uows: UnitOfWorkFactory, clock: Clock, retention: timedelta) -> int:
    """Forget events received longer than ``retention`` ago, in short batches; how many went.

    Run by housekeeping, not by each event: on every event the query cost a round trip."""
    pruned = 0
    while True:
        async with uows() as uow:
            removed = await uow.inbox.prune(clock.now() - retention, PRUNE_BATCH)
            await uow.commit()
        pruned += removed
        if removed < PRUNE_BATCH:
            return pruned


async def apply_recorded(
    source: str,
    event_id: str,
    command: Command,
    uows: UnitOfWorkFactory,
    clock: Clock,
    policy: Policy,
) -> Result:
    """Dispatch a command whose event the inbox holds; a refusal is written on its row."""
    try:
        return await dispatch(command, uows, clock, policy)
    except Exception as exc:
        # An unexpected error is recorded too: a row left pending looks like work in flight.
        reason = (
            f"{exc.code}: {exc.detail}"
            if isinstance(exc, HarmonyError)
            else f"internal: {type(exc).__name__}"
        )
        async with uows() as uow:
            await uow.inbox.mark_failed(source, event_id, reason, clock.now())
            await uow.commit()
        raise


async def redrive(
    source: str,
    event_id: str,
    parse: Callable[[str], InboundEvent],
    uows: UnitOfWorkFactory,
    clock: Clock,
    policy: Policy,
) -> Result:
    """Apply again a stored event that was refused (or never finished): an operator's re-drive
    once the cause is fixed. ``parse`` is the sending adapter's reading of a stored payload.

    An event already applied is refused (Conflict ``already_applied``): re-driving is for
    events that did not take effect, never a way to apply one twice.
    """
    async with uows() as uow:
        entry = await uow.inbox.get(source, event_id)
    if entry is None:
        raise NotFound(f"no event '{event_id}' from {source} in the inbox", code="unknown_event")
    if entry.status == InboxStatus.APPLIED:
        raise Conflict(
            f"event '{event_id}' from {source} was applied at {entry.handled_at}; "
            "only an event that failed can be re-driven",
            code="already_applied",
        )
    if entry.payload is None:
        raise Conflict(
            f"event '{event_id}' from {source} was stored without its payload",
            code="no_payload",
        )
    event = parse(entry.payload)
    return await apply_recorded(source, event_id, event.command, uows, clock, policy)
