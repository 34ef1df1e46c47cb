"""Use cases: one function per thing that can happen, each one unit of work.

Every function opens the unit of work it is given, applies the change through the domain model,
writes the outbound messages the change causes to the outbox, and commits once. Nothing here
talks to the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from harmony.errors import Collided, Conflict, NotFound, ValidationFailed
from harmony.routing.agent_state import (
    AgentStateEntry,
    StateOutcome,
    entry_for,
    offer_refusal,
)
from harmony.routing.agents import (
    OPERATOR,
    apply_pending_state,
    mirror_capacity,
    profile_of,
    wrap_up_timer,
)
from harmony.routing.deadlines import TIMER_KIND, next_timer, offer_expiry
from harmony.routing.ids import random_hex, random_uuid
from harmony.routing.lifecycle import Event, Move
from harmony.routing.messages import (
    INTERACTION_DELIVER,
    ROUTING_REQUESTED,
    WORK_ENDED,
    OutboundMessage,
    TargetKind,
)
from harmony.routing.model import (
    AWAITING_SELECTION,
    DEFAULT_PROFILE,
    Agent,
    Channel,
    ChannelState,
    GuardedMove,
    Interaction,
    InteractionState,
    Offer,
    OfferStatus,
    Queue,
    validate_capacity,
)
from harmony.routing.ports import (
    Acknowledged,
    Clock,
    EventClaim,
    Timer,
    UnitOfWork,
    UnitOfWorkFactory,
)

S = InteractionState
# What the CRM's acknowledgement of a delivery confirms.
# The CRM acknowledged a delivery: the table's rule, as a move the store applies where it writes.
DELIVERY_ACKNOWLEDGED = GuardedMove(
    source=S.OFFERED,
    target=S.DELIVERED,
    event=Event.DELIVERED.value,
    otherwise="delivery_acknowledged",
)


@dataclass(frozen=True)
class NewInteraction:
    """What a CRM tells Harmony about a chat or email to route."""

    external_id: str
    channel: Channel
    queue: str
    priority: int = 0
    skills: list[str] = field(default_factory=list)
    customer: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a use case did: which interaction, and whether the event had been seen before."""

    interaction_id: str
    duplicate: bool = False


def source_of(kind: TargetKind, adapter: str) -> str:
    return f"{kind.value}:{adapter}"


async def _claim_or_duplicate(
    uow: UnitOfWork,
    source: str,
    event_id: str,
    event_type: str,
    clock: Clock,
    interaction_id: str,
) -> Outcome | None:
    """Claim the event in the inbox, noting the interaction it concerns; on a repeat, return
    the first delivery's outcome."""
    if await uow.inbox.claim(source, event_id, event_type, clock.now(), interaction_id):
        return None
    return await _duplicate_of(uow, source, event_id, interaction_id)


async def _duplicate_of(
    uow: UnitOfWork, source: str, event_id: str, interaction_id: str
) -> Outcome:
    """The outcome of an event applied before: the interaction its first delivery concerned."""
    previous = await uow.inbox.interaction_for(source, event_id)
    return Outcome(interaction_id=previous or interaction_id, duplicate=True)


def routing_request(interaction: Interaction) -> OutboundMessage:
    assert interaction.request_id is not None
    return OutboundMessage(
        target_kind=TargetKind.ACD,
        target=interaction.acd_adapter,
        type=ROUTING_REQUESTED,
        interaction_id=interaction.id,
        payload={
            "request_id": interaction.request_id,
            "interaction_id": interaction.id,
            "channel": interaction.channel.value,
            "queue": interaction.queue,
            "priority": interaction.priority,
            "skills": list(interaction.skills),
            "customer": interaction.customer,
            "subject": interaction.subject,
            "received_at": interaction.received_at.isoformat(),
        },
    )


def work_ended(
    interaction: Interaction, agent: Agent, reason: str, wrap_up_seconds: int
) -> OutboundMessage:
    return OutboundMessage(
        target_kind=TargetKind.ACD,
        target=interaction.acd_adapter,
        type=WORK_ENDED,
        interaction_id=interaction.id,
        payload={
            "request_id": interaction.request_id,
            "interaction_id": interaction.id,
            "agent_id": agent.acd_agent_id,
            "channel": interaction.channel.value,
            "reason": reason,
            "wrap_up_seconds": wrap_up_seconds,
        },
    )


def _delivery(interaction: Interaction, agent: Agent, offer: Offer) -> OutboundMessage:
    return OutboundMessage(
        target_kind=TargetKind.CRM,
        target=interaction.crm_adapter,
        type=INTERACTION_DELIVER,
        interaction_id=interaction.id,
        payload={
            "interaction_id": interaction.id,
            "external_id": interaction.external_id,
            "channel": interaction.channel.value,
            "queue": interaction.queue,
            "agent_id": agent.crm_agent_id,
            "offer_id": offer.id,
            "expires_at": offer.expires_at.isoformat(),
        },
    )


def _required(timer: Timer | None) -> Timer:
    assert timer is not None, "this state always has a deadline"
    return timer


async def receive_interaction(
    uows: UnitOfWorkFactory,
    clock: Clock,
    *,
    crm_adapter: str,
    acd_adapter: str,
    event_id: str,
    new: NewInteraction,
) -> Outcome:
    """A CRM reported a new chat or email: store it and place a routing request in the ACD.

    The same event id, or the same CRM external id, twice yields one interaction and one
    routing request. Unlike the other use cases this one takes a factory of units of work: the
    usual case, a first delivery about a new interaction, is written in a one-write unit of
    work (on PostgreSQL one statement, with the queue as read at most a moment ago, else the
    queue read first); when that write meets a row stored before, nothing was stored and a
    second, careful unit of work sorts out the repeat.
    """
    arguments = _Receiving(crm_adapter, acd_adapter, event_id, new)
    try:
        return await _receive_first(uows().one_write(), clock, arguments)
    except Collided:
        return await _receive_again(uows(), clock, arguments)


@dataclass(frozen=True)
class _Receiving:
    crm_adapter: str
    acd_adapter: str
    event_id: str
    new: NewInteraction

    @property
    def source(self) -> str:
        return source_of(TargetKind.CRM, self.crm_adapter)


async def _receive_first(uow: UnitOfWork, clock: Clock, r: _Receiving) -> Outcome:
    """Read the queue, then write the interaction with its history, the routing request and
    the event's inbox row in the one write (a repeat makes it fail: ``Collided``)."""
    interaction_id = str(random_uuid())
    async with uow:
        queue = await queue_named(uow, r.new.queue, recent=True)
        now = clock.now()
        interaction = _received(interaction_id, r, queue, now)
        await uow.inbox.claim_with_next_write(
            r.source, r.event_id, "interaction.created", now, interaction_id
        )
        await uow.outbox.add(routing_request(interaction), now)
        await _arm_first_deadline(uow, interaction, queue, now)
        await uow.interactions.add(interaction)  # the one write: it carries the rows above
        await uow.commit()
        return Outcome(interaction.id)


async def _receive_again(uow: UnitOfWork, clock: Clock, r: _Receiving) -> Outcome:
    """The careful path: claim the event first (a repeat answers as the first delivery did, a
    refused one is applied now), then insert unless the external id is stored already."""
    interaction_id = str(random_uuid())
    async with uow:
        duplicate = await _claim_or_duplicate(
            uow, r.source, r.event_id, "interaction.created", clock, interaction_id
        )
        if duplicate:
            return duplicate
        queue = await queue_named(uow, r.new.queue)
        now = clock.now()
        interaction = _received(interaction_id, r, queue, now)
        if not await uow.interactions.add_if_absent(interaction):
            existing = await uow.interactions.get_by_external_id(r.crm_adapter, r.new.external_id)
            assert existing is not None
            await uow.inbox.link(r.source, r.event_id, existing.id)
            await uow.commit()
            return Outcome(existing.id, duplicate=True)
        await uow.outbox.add(routing_request(interaction), now)
        await _arm_first_deadline(uow, interaction, queue, now)
        await uow.commit()
        return Outcome(interaction.id)


async def _arm_first_deadline(
    uow: UnitOfWork, interaction: Interaction, queue: Queue, now: datetime
) -> None:
    timer = next_timer(interaction, queue, now)
    assert timer is not None, "a routing request placed always has a deadline"
    await uow.timers.arm_first(timer, now)


async def arm_deadline(
    uow: UnitOfWork,
    interaction: Interaction,
    queue: Queue,
    now: datetime,
    *,
    offer: Offer | None = None,
    placements: int = 1,
    named_agent: str | None = None,
) -> None:
    """Arm the deadline the interaction's state needs now (``deadlines.next_timer``), or
    disarm it when it needs none."""
    timer = next_timer(
        interaction, queue, now, offer=offer, placements=placements, named_agent=named_agent
    )
    if timer is None:
        await uow.timers.disarm(TIMER_KIND, interaction.id)
    else:
        await uow.timers.arm(timer, now)


async def queue_named(uow: UnitOfWork, name: str, *, recent: bool = False) -> Queue:
    queue = await (uow.queues.get_recent(name) if recent else uow.queues.get(name))
    if queue is None:
        raise ValidationFailed(f"data.queue: unknown queue '{name}'", code="unknown_queue")
    return queue


def _received(interaction_id: str, r: _Receiving, queue: Queue, now: datetime) -> Interaction:
    """The new interaction, received and with its routing request placed."""
    new = r.new
    interaction = Interaction.receive(
        interaction_id=interaction_id,
        crm_adapter=r.crm_adapter,
        external_id=new.external_id,
        channel=new.channel,
        queue=queue,
        priority=new.priority,
        skills=new.skills,
        customer=new.customer,
        subject=new.subject,
        acd_adapter=r.acd_adapter,
        at=now,
        cause=f"interaction.created {r.event_id} from {r.source}",
    )
    interaction.request_id = f"rr_{random_hex()}"
    interaction.apply(
        Event.ROUTING_REQUESTED,
        now,
        cause=f"routing request placed with acd:{r.acd_adapter}",
        detail={"request_id": interaction.request_id},
    )
    return interaction


async def crm_event_claimed(
    uow: UnitOfWork, crm_adapter: str, external_id: str, claim: EventClaim
) -> tuple[Interaction, Outcome | None]:
    """The interaction a CRM event concerns, locked, and the event claimed for it; the
    outcome to answer instead when the event was applied before."""
    interaction, claimed = await uow.interactions.get_by_external_id_claiming(
        crm_adapter, external_id, claim
    )
    if interaction is None:
        raise NotFound(
            f"data.external_id: no interaction '{external_id}' from crm:{crm_adapter}",
            code="unknown_interaction",
        )
    if claimed:
        return interaction, None
    return interaction, await _duplicate_of(uow, claim.source, claim.event_id, interaction.id)


async def other_agent_named(
    uow: UnitOfWork, interaction: Interaction, crm_agent_id: str | None
) -> str | None:
    """The CRM's id of the agent holding ``interaction`` when an event names another one
    (``crm_agent_id``); None when it names none, or the holder."""
    if crm_agent_id is None or interaction.agent_id is None:
        return None
    holder = await uow.agents.crm_agent_id_of(interaction.agent_id)
    return holder if holder is not None and holder != crm_agent_id else None


async def accept_interaction(
    uow: UnitOfWork,
    clock: Clock,
    *,
    crm_adapter: str,
    event_id: str,
    external_id: str,
    crm_agent_id: str | None,
) -> Outcome:
    """The agent accepted the delivered work in the CRM."""
    source = source_of(TargetKind.CRM, crm_adapter)
    async with uow:
        claim = EventClaim(source, event_id, "interaction.accepted", clock.now())
        interaction, duplicate = await crm_event_claimed(uow, crm_adapter, external_id, claim)
        if duplicate:
            return duplicate
        delivered_to = await other_agent_named(uow, interaction, crm_agent_id)
        if delivered_to is not None:
            raise Conflict(
                f"data.agent_id: interaction {interaction.id} was delivered to "
                f"{delivered_to}, not {crm_agent_id}",
                code="invalid_transition",
            )
        now = clock.now()
        rule = interaction.apply(Event.ACCEPTED, now, cause=f"interaction.accepted {event_id}")
        if isinstance(rule, Move):
            # Accepted work has no deadline: it stays with the agent until they complete it.
            await uow.offers.decide(interaction.id, OfferStatus.ACCEPTED, now)
            await uow.timers.disarm(TIMER_KIND, interaction.id)
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


async def complete_interaction(
    uow: UnitOfWork, clock: Clock, *, crm_adapter: str, event_id: str, external_id: str
) -> Outcome:
    """The agent finished: release the agent's capacity and tell the ACD the work ended."""
    source = source_of(TargetKind.CRM, crm_adapter)
    async with uow:
        claim = EventClaim(source, event_id, "interaction.completed", clock.now())
        interaction, duplicate = await crm_event_claimed(uow, crm_adapter, external_id, claim)
        if duplicate:
            return duplicate
        now = clock.now()
        accepted_before = interaction.state == S.ACCEPTED
        rule = interaction.apply(Event.COMPLETED, now, cause=f"interaction.completed {event_id}")
        if isinstance(rule, Move):
            # The agent first: a read sends the rows written later before it.
            agent = await holding_agent(uow, interaction)
            await uow.offers.decide(interaction.id, OfferStatus.COMPLETED, now)
            if not accepted_before:  # completed before accepted: its offer's timer still runs
                await uow.timers.disarm(TIMER_KIND, interaction.id)
            seconds = (await profile_of(uow, agent)).wrap_up_seconds.get(interaction.channel, 0)
            await release_unit(uow, agent, interaction, now, source, "work_completed", seconds)
            await uow.outbox.add(work_ended(interaction, agent, "completed", seconds), now)
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


def _load_entry(
    agent_id: str,
    state: ChannelState,
    now: datetime,
    source: str,
    event: str,
    interaction_id: str,
) -> AgentStateEntry:
    return entry_for(
        agent_id,
        state,
        at=now,
        source=source,
        event=event,
        outcome=StateOutcome.APPLIED,
        detail={"interaction_id": interaction_id},
    )


async def release_unit(
    uow: UnitOfWork,
    agent: Agent,
    interaction: Interaction,
    now: datetime,
    source: str,
    event: str,
    wrap_up_seconds: int,
) -> None:
    """Give the agent's unit back, start the channel's wrap-up, and record both."""
    channel = interaction.channel
    wrap_up_until = now + timedelta(seconds=wrap_up_seconds) if wrap_up_seconds > 0 else None
    await uow.agents.release(agent.id, channel, wrap_up_until)
    before = agent.capacity_on(channel)
    after = replace(
        before,
        load=max(before.load - 1, 0),
        wrap_up_until=wrap_up_until or before.wrap_up_until,
    )
    agent.channels[channel] = after
    await uow.agents.append_history(
        [_load_entry(agent.id, after, now, source, event, interaction.id)]
    )
    if wrap_up_until is not None:
        # Its end is told to both sides, so the CRM's media bar shows ready without polling.
        timer = wrap_up_timer(agent, channel, wrap_up_until, interaction.acd_adapter)
        await uow.timers.arm(timer, now)
    await apply_pending_state(
        uow, agent, channel, now, interaction.acd_adapter, f"{event} {interaction.id}"
    )


async def holding_agent(uow: UnitOfWork, interaction: Interaction) -> Agent:
    if interaction.agent_id is None:
        raise AssertionError(f"interaction {interaction.id} holds capacity but has no agent")
    agent = await uow.agents.get(interaction.agent_id, for_update=True)
    if agent is None:
        raise AssertionError(f"agent {interaction.agent_id} of {interaction.id} vanished")
    return agent


async def _request_event_claimed(
    uow: UnitOfWork, acd_adapter: str, request_id: str, claim: EventClaim
) -> tuple[Interaction | None, Outcome | None]:
    """The interaction of an ACD's routing request, locked, and the event claimed for it; the
    outcome to answer instead when the event was applied before (then without the interaction
    when the request has been replaced since)."""
    interaction, claimed = await uow.interactions.get_by_request_id_claiming(request_id, claim)
    if interaction is None:
        # The request may have been replaced since (a transfer, an overflow): a repeat of an
        # event applied for it is still a duplicate.
        applied_for = await uow.inbox.interaction_for(claim.source, claim.event_id)
        if applied_for is not None:
            return None, Outcome(interaction_id=applied_for, duplicate=True)
    # A request placed with one ACD is unknown to any other: it cannot answer for it (the
    # claim rolls back with the refusal).
    if interaction is None or interaction.acd_adapter != acd_adapter:
        raise NotFound(
            f"data.request_id: no routing request '{request_id}' placed with acd:{acd_adapter}",
            code="unknown_interaction",
        )
    if claimed:
        return interaction, None
    return interaction, await _duplicate_of(uow, claim.source, claim.event_id, interaction.id)


async def select_agent(
    uow: UnitOfWork,
    clock: Clock,
    *,
    acd_adapter: str,
    event_id: str,
    request_id: str,
    acd_agent_id: str,
) -> Outcome:
    """The ACD chose an agent: reserve capacity, offer the work, and ask the CRM to deliver.

    If the agent cannot take the work (not ready on the channel, wrapping up, at capacity, or
    busy on a channel whose work blocks this one), nothing changes and Conflict
    (``agent_unavailable``) tells the ACD to choose again.
    """
    source = source_of(TargetKind.ACD, acd_adapter)
    async with uow:
        claim = EventClaim(source, event_id, "agent.selected", clock.now())
        interaction, duplicate = await _request_event_claimed(uow, acd_adapter, request_id, claim)
        if duplicate:
            return duplicate
        assert interaction is not None
        channel = interaction.channel
        # Locking the agent serialises this check with voice calls and state changes. The
        # unit is reserved with the lock (one round trip); a refusal below rolls it back.
        agent, reserved = await uow.agents.get_by_acd_id_reserving(acd_agent_id, channel)
        if agent is None:
            raise NotFound(f"data.agent_id: no agent '{acd_agent_id}'", code="unknown_agent")
        interaction.refuse_unless_allowed(Event.AGENT_SELECTED)
        now = clock.now()
        refusal = offer_refusal(agent.channels, await profile_of(uow, agent), channel, now)
        if refusal is None and not reserved:
            refusal = f"has no free {channel.value} capacity"
        if refusal is not None:
            raise Conflict(f"agent {acd_agent_id} {refusal}", code="agent_unavailable")
        before = agent.capacity_on(channel)
        load = replace(before, load=before.load + 1)
        await uow.agents.append_history(
            [_load_entry(agent.id, load, now, source, "offer_reserved", interaction.id)]
        )
        queue = await queue_named(uow, interaction.queue, recent=True)
        offer = Offer(
            id=f"ofr_{random_hex()}",
            interaction_id=interaction.id,
            agent_id=agent.id,
            channel=channel,
            status=OfferStatus.PENDING,
            offered_at=now,
            expires_at=offer_expiry(queue, now),
        )
        interaction.agent_id = agent.id
        interaction.offers_made += 1
        interaction.apply(
            Event.AGENT_SELECTED,
            now,
            cause=f"agent.selected {event_id} from {source}",
            detail={
                "agent_id": agent.id,
                "acd_agent_id": agent.acd_agent_id,
                "crm_agent_id": agent.crm_agent_id,
                "load": load.load,
                "capacity": load.capacity,
                "offer_id": offer.id,
                "offer": interaction.offers_made,
            },
        )
        await uow.offers.add(offer)
        await uow.timers.arm(_required(next_timer(interaction, queue, now, offer=offer)), now)
        await uow.outbox.add(_delivery(interaction, agent, offer), now)
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


async def queue_request(
    uow: UnitOfWork,
    clock: Clock,
    *,
    acd_adapter: str,
    event_id: str,
    request_id: str,
    position: int | None,
) -> Outcome:
    """The ACD holds the request until an agent frees up."""
    source = source_of(TargetKind.ACD, acd_adapter)
    async with uow:
        claim = EventClaim(source, event_id, "request.queued", clock.now())
        interaction, duplicate = await _request_event_claimed(uow, acd_adapter, request_id, claim)
        if duplicate:
            return duplicate
        assert interaction is not None
        detail = {"position": position} if position is not None else {}
        cause = f"request.queued {event_id} from {source}"
        # In the queue already: its position; overtaken by the selection: a late notice.
        now = clock.now()
        rule = interaction.apply(Event.QUEUED, now, cause=cause, detail=detail)
        if isinstance(rule, Move):
            # The ACD holds it now: the queue's maximum wait bounds it, not the routing timeout.
            queue = await queue_named(uow, interaction.queue, recent=True)
            await arm_deadline(uow, interaction, queue, now)
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


async def message_sent(
    uow: UnitOfWork, clock: Clock, message: OutboundMessage, *, claim_token: str
) -> bool:
    """The receiver acknowledged an outbound message: apply what that confirms.

    Only for the claim that sent it: False, with nothing changed, if that claim was lost.
    """
    return message.id in await messages_sent(uow, clock, [(message, claim_token)])


async def messages_sent(
    uow: UnitOfWork, clock: Clock, sent: Sequence[tuple[OutboundMessage, str]]
) -> set[str]:
    """Receivers acknowledged these messages (each with the claim token that sent it): record
    them all in one unit of work and apply what they confirm (a delivery: offered ->
    delivered; an interaction that moved on meanwhile has the acknowledgement noted).

    Returns the ids recorded. A message whose claim was lost is left out, with nothing changed
    for it: the relay now holding it records its fate. Lock order: the outbox rows, then the
    delivered interactions in id order. One statement where the store can: the store applies
    the delivery to the state it holds locked, so nothing is read first.
    """
    acknowledged = [
        Acknowledged(
            message.id,
            claim_token,
            message.interaction_id,
            f"crm:{message.target} acknowledged delivery {message.id}",
        )
        if message.type == INTERACTION_DELIVER
        else Acknowledged(message.id, claim_token)
        for message, claim_token in sent
    ]
    async with uow.single_statement():
        recorded = await uow.interactions.record_acknowledged(
            acknowledged, clock.now(), DELIVERY_ACKNOWLEDGED
        )
        await uow.commit()
        return recorded


async def message_failed(
    uow: UnitOfWork, clock: Clock, message: OutboundMessage, error: str, *, claim_token: str
) -> bool:
    """An outbound message will never be delivered: fail the interaction it was for.

    A failed delivery gives the agent's reserved capacity back and tells the ACD the work ended.
    Only for the claim that tried it: False, with nothing changed, if that claim was lost (the
    relay now holding the message decides its fate).
    """
    async with uow:
        now = clock.now()
        if not await uow.outbox.mark_dead(message.id, claim_token, now, error):
            return False
        interaction = await uow.interactions.get(message.interaction_id, for_update=True)
        if interaction is not None:
            cause = f"{message.type} to {message.target_kind}:{message.target} failed: {error}"
            await _fail_after_lost_message(uow, interaction, message, cause, now)
            await uow.interactions.save(interaction)
        await uow.commit()
        return True


async def _fail_after_lost_message(
    uow: UnitOfWork,
    interaction: Interaction,
    message: OutboundMessage,
    cause: str,
    now: datetime,
) -> None:
    lost_current_request = (
        message.type == ROUTING_REQUESTED
        and interaction.state in AWAITING_SELECTION
        and message.payload.get("request_id") == interaction.request_id
    )
    lost_delivery = message.type == INTERACTION_DELIVER and interaction.state == S.OFFERED
    if lost_delivery:
        agent = await holding_agent(uow, interaction)
        interaction.apply(Event.FAILED, now, cause=cause)
        await uow.offers.decide(interaction.id, OfferStatus.RESCINDED, now, "delivery_failed")
        await uow.timers.disarm(TIMER_KIND, interaction.id)
        source = source_of(message.target_kind, message.target)
        await release_unit(uow, agent, interaction, now, source, "delivery_failed", 0)
        await uow.outbox.add(work_ended(interaction, agent, "delivery_failed", 0), now)
    elif lost_current_request:
        interaction.apply(Event.FAILED, now, cause=cause)
        await uow.timers.disarm(TIMER_KIND, interaction.id)
    else:
        interaction.note("message_lost", now, cause, {"message_id": message.id})


async def upsert_queue(uow: UnitOfWork, queue: Queue) -> None:
    """Create or replace a queue; its overflow queue must exist and take the same channel."""
    async with uow:
        overflow = queue.overflow_queue
        if overflow is not None:
            target = await uow.queues.get(overflow)
            if overflow == queue.name:
                raise ValidationFailed(
                    "overflow_queue: a queue cannot overflow into itself",
                    code="invalid_overflow_queue",
                )
            if target is None:
                raise ValidationFailed(
                    f"overflow_queue: unknown queue '{overflow}'", code="unknown_queue"
                )
            if target.channel != queue.channel:
                raise ValidationFailed(
                    f"overflow_queue: queue '{overflow}' takes {target.channel.value}, "
                    f"not {queue.channel.value}",
                    code="queue_channel_mismatch",
                )
        await uow.queues.upsert(queue)
        await uow.commit()


async def upsert_agent(
    uow: UnitOfWork,
    clock: Clock,
    *,
    agent_id: str,
    name: str,
    crm_agent_id: str,
    acd_agent_id: str,
    skills: list[str],
    profile: str = DEFAULT_PROFILE,
    crm_adapter: str = "generic",
    capacity: dict[Channel, int] | None = None,
    acd_adapter: str | None = None,
) -> Agent:
    """Create or update an agent; states and loads are kept, loads never exceed capacities.

    ``capacity`` overrides the profile's capacity on the channels it names. A new agent, or one
    whose capacities or profile changed, is mirrored to ``acd_adapter`` (``agent.capacity``);
    ``None`` tells no ACD.
    """
    overrides = capacity or {}
    validate_capacity(overrides)
    agent = Agent(
        id=agent_id,
        name=name,
        crm_agent_id=crm_agent_id,
        acd_agent_id=acd_agent_id,
        skills=sorted(set(skills)),
        channels={},
        profile=profile,
        crm_adapter=crm_adapter,
    )
    async with uow:
        if await uow.profiles.get(profile) is None:
            raise ValidationFailed(f"profile: unknown profile '{profile}'", code="unknown_profile")
        before = await uow.agents.get(agent_id)
        changed = await uow.agents.upsert(agent, overrides)
        now = clock.now()
        await uow.agents.append_history(
            [
                entry_for(
                    agent_id,
                    state,
                    at=now,
                    source=OPERATOR,
                    event="capacity_changed",
                    outcome=StateOutcome.APPLIED,
                    detail={"profile": profile},
                )
                for state in changed
            ]
        )
        stored = await uow.agents.get(agent_id)
        assert stored is not None
        if acd_adapter is not None and (before is None or before.profile != profile or changed):
            await mirror_capacity(uow, stored, await profile_of(uow, stored), acd_adapter, now)
        await uow.commit()
    return stored


__all__ = [
    "NewInteraction",
    "Outcome",
    "accept_interaction",
    "complete_interaction",
    "message_failed",
    "message_sent",
    "messages_sent",
    "queue_request",
    "receive_interaction",
    "select_agent",
    "upsert_agent",
    "upsert_queue",
]
