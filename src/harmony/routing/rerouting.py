"""Use cases of the unhappy paths: declines, offer and routing timeouts, maximum waits,
overflow, abandon and cancel. Each is one unit of work, like those of ``interactions.py``.

What they share: an offer that ends without the work gives the agent's unit back, may make the
agent not ready (RONA, per profile), and puts the interaction back to waiting with its original
age, the ACD told so it selects again (``offer.declined`` / ``offer.timed_out``, naming the agents
already tried). Work a queue gives up on (its maximum wait, its maximum offers, the ACD not
answering twice) follows the queue's overflow rule: another queue, or back to the CRM's own
routing. Every interaction that waits carries its deadline timer (``routing.deadlines``);
``on_deadline`` is that timer's handler.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from harmony.errors import Conflict, NotFound, ValidationFailed
from harmony.routing.agent_state import StateOutcome, entry_for, offer_refusal
from harmony.routing.agents import (
    AGENT_LEFT,
    RETURN_TO_QUEUE,
    mirror,
    profile_of,
    take_back_work,
)
from harmony.routing.deadlines import TIMER_KIND, Deadline
from harmony.routing.ids import random_hex
from harmony.routing.interactions import (
    Outcome,
    arm_deadline,
    crm_event_claimed,
    holding_agent,
    other_agent_named,
    queue_named,
    release_unit,
    routing_request,
    source_of,
    work_ended,
)
from harmony.routing.lifecycle import Event, Move
from harmony.routing.messages import (
    INTERACTION_FALLBACK,
    OFFER_DECLINED,
    OFFER_RESCINDED,
    OFFER_TIMED_OUT,
    REQUEST_CANCELLED,
    OutboundMessage,
    TargetKind,
)
from harmony.routing.model import (
    MAX_OVERFLOWS,
    WAITING_STATES,
    Agent,
    Channel,
    ChannelStatus,
    Interaction,
    InteractionState,
    OfferStatus,
    Queue,
)
from harmony.routing.ports import Clock, EventClaim, Timer, UnitOfWork

__all__ = [
    "HARMONY",
    "RONA_REASON",
    "TransferTarget",
    "abandon_interaction",
    "decline_interaction",
    "on_deadline",
    "on_wrap_up_end",
    "transfer_interaction",
]

S = InteractionState
HARMONY = "harmony"
RONA_REASON = "rona"
# What the ACD is told when an offer ends without the work (it selects again).
_TOLD_TO_ACD = {
    OfferStatus.DECLINED: OFFER_DECLINED,
    OfferStatus.TIMED_OUT: OFFER_TIMED_OUT,
    OfferStatus.RESCINDED: OFFER_RESCINDED,
}


def _to_acd(
    interaction: Interaction, message_type: str, payload: dict[str, Any]
) -> OutboundMessage:
    return OutboundMessage(
        target_kind=TargetKind.ACD,
        target=interaction.acd_adapter,
        type=message_type,
        interaction_id=interaction.id,
        payload={
            "request_id": interaction.request_id,
            "interaction_id": interaction.id,
            **payload,
        },
    )


def _to_crm(
    interaction: Interaction, message_type: str, payload: dict[str, Any]
) -> OutboundMessage:
    return OutboundMessage(
        target_kind=TargetKind.CRM,
        target=interaction.crm_adapter,
        type=message_type,
        interaction_id=interaction.id,
        payload={
            "interaction_id": interaction.id,
            "external_id": interaction.external_id,
            "channel": interaction.channel.value,
            **payload,
        },
    )


def _waited(interaction: Interaction, now: datetime) -> float:
    return round((now - interaction.received_at).total_seconds(), 3)


async def decline_interaction(
    uow: UnitOfWork,
    clock: Clock,
    *,
    crm_adapter: str,
    event_id: str,
    external_id: str,
    crm_agent_id: str | None = None,
    reason: str | None = None,
) -> Outcome:
    """The agent declined the offered work in the CRM: the unit goes back, the work waits
    again with its age, and the ACD selects again (or the queue's overflow rule applies once
    the queue's offers are spent). A decline for an offer that ended already is noted."""
    source = source_of(TargetKind.CRM, crm_adapter)
    async with uow:
        claim = EventClaim(source, event_id, "interaction.declined", clock.now())
        interaction, duplicate = await crm_event_claimed(uow, crm_adapter, external_id, claim)
        if duplicate:
            return duplicate
        offered_to = await other_agent_named(uow, interaction, crm_agent_id)
        if offered_to is not None:
            raise ValidationFailed(
                f"data.agent_id: interaction {interaction.id} is offered to {offered_to}, "
                f"not {crm_agent_id}",
                code="not_offered_to_agent",
            )
        now = clock.now()
        detail = {"reason": reason} if reason else {}
        cause = f"interaction.declined {event_id} from {source}"
        rule = interaction.apply(Event.DECLINED, now, cause=cause, detail=detail)
        if isinstance(rule, Move):
            await _offer_ended(uow, interaction, now, OfferStatus.DECLINED, reason or "declined")
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


async def abandon_interaction(
    uow: UnitOfWork,
    clock: Clock,
    *,
    crm_adapter: str,
    event_id: str,
    external_id: str,
    cancelled: bool = False,
) -> Outcome:
    """The customer left (``interaction.abandoned``), or the CRM withdrew the work
    (``interaction.cancelled``): waiting or offered work ends, the request is cancelled at the
    ACD, an offer is taken back and its unit freed, and the wait is recorded. Work an agent
    accepted stays with them; the abandon is noted."""
    event = Event.CANCELLED if cancelled else Event.ABANDONED
    event_type = f"interaction.{event.value}"
    source = source_of(TargetKind.CRM, crm_adapter)
    async with uow:
        claim = EventClaim(source, event_id, event_type, clock.now())
        interaction, duplicate = await crm_event_claimed(uow, crm_adapter, external_id, claim)
        if duplicate:
            return duplicate
        now = clock.now()
        before = interaction.state
        detail = {"waited_seconds": _waited(interaction, now)}
        cause = f"{event_type} {event_id} from {source}"
        rule = interaction.apply(event, now, cause=cause, detail=detail)
        if isinstance(rule, Move):
            agent_payload: dict[str, Any] = {}
            if before in (S.OFFERED, S.DELIVERED):
                agent = await holding_agent(uow, interaction)
                await uow.offers.decide(interaction.id, OfferStatus.ABANDONED, now, event.value)
                await release_unit(uow, agent, interaction, now, source, f"offer_{event.value}", 0)
                agent_payload = {"agent_id": agent.acd_agent_id}
            await uow.timers.disarm(TIMER_KIND, interaction.id)
            if before != S.RECEIVED:
                message = _to_acd(
                    interaction, REQUEST_CANCELLED, {"reason": event.value, **agent_payload}
                )
                await uow.outbox.add(message, now)
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


@dataclass(frozen=True)
class TransferTarget:
    """Where a transfer sends the work: a queue, or a named agent (in its current queue unless
    a queue is named too). Exactly one of the agent's ids is given, or none."""

    queue: str | None = None
    agent_id: str | None = None  # Harmony's id (an operator)
    crm_agent_id: str | None = None  # the CRM's id (the CRM's own transfer)


async def transfer_interaction(
    uow: UnitOfWork,
    clock: Clock,
    *,
    interaction_ref: str,
    target: TransferTarget,
    by: str,
    crm_adapter: str | None = None,
    event_id: str | None = None,
    crm_agent_id: str | None = None,
) -> Outcome:
    """The agent (``interaction.transfer_requested`` from the CRM: ``interaction_ref`` is the
    CRM's external id) or a supervisor (``interaction_ref`` is Harmony's id) sends accepted work
    elsewhere: the first agent's unit is freed and the ACD told the work ended there, and the
    work is routed again through the ACD in the target queue, with its history and original
    age. A named agent who cannot take it now is refused with the reason (409
    ``agent_unavailable``), and nothing changes."""
    async with uow:
        if crm_adapter is not None:
            assert event_id is not None
            source = source_of(TargetKind.CRM, crm_adapter)
            claim = EventClaim(source, event_id, "interaction.transfer_requested", clock.now())
            interaction, duplicate = await crm_event_claimed(
                uow, crm_adapter, interaction_ref, claim
            )
            if duplicate:
                return duplicate
        else:
            source = by
            found = await uow.interactions.get(interaction_ref, for_update=True)
            if found is None:
                raise NotFound(f"no interaction '{interaction_ref}'", code="unknown_interaction")
            interaction = found
        await _transfer(uow, interaction, target, by, clock.now(), source, crm_agent_id, event_id)
        await uow.interactions.save(interaction)
        await uow.commit()
        return Outcome(interaction.id)


async def _transfer(
    uow: UnitOfWork,
    interaction: Interaction,
    target: TransferTarget,
    by: str,
    now: datetime,
    source: str,
    crm_agent_id: str | None = None,
    event_id: str | None = None,
) -> None:
    """Move the locked, accepted ``interaction`` to ``target`` (see ``transfer_interaction``);
    the caller saves it."""
    interaction.refuse_unless_allowed(Event.TRANSFER_REQUESTED)
    queue = await queue_named(uow, target.queue or interaction.queue)
    if queue.channel != interaction.channel:
        raise ValidationFailed(
            f"queue: '{queue.name}' takes {queue.channel.value}, not {interaction.channel.value}",
            code="queue_channel_mismatch",
        )
    holder = await holding_agent(uow, interaction)
    if crm_agent_id is not None and crm_agent_id != holder.crm_agent_id:
        raise Conflict(
            f"data.agent_id: interaction {interaction.id} is with {holder.crm_agent_id}, "
            f"not {crm_agent_id}",
            code="invalid_transition",
        )
    named = await _named_agent(uow, target, holder, interaction, now)
    if named is None and queue.name == interaction.queue and target.queue is None:
        raise ValidationFailed(
            "a transfer names a queue or an agent", code="transfer_target_missing"
        )
    await uow.offers.decide(interaction.id, OfferStatus.TRANSFERRED, now, "transferred")
    await release_unit(uow, holder, interaction, now, source, "work_transferred", 0)
    await uow.outbox.add(work_ended(interaction, holder, "transferred", 0), now)
    previous_queue = interaction.queue
    interaction.agent_id = None
    interaction.queue = queue.name
    interaction.offers_made = 0
    interaction.max_wait_at = now + timedelta(seconds=queue.policy.max_wait_seconds)
    interaction.request_id = f"rr_{random_hex()}"
    detail: dict[str, Any] = {
        "from_agent_id": holder.id,
        "from_queue": previous_queue,
        "to_queue": queue.name,
        "request_id": interaction.request_id,
        "by": by,
    }
    if named is not None:
        detail["to_agent_id"] = named.id
    interaction.apply(
        Event.TRANSFER_REQUESTED,
        now,
        cause=f"transfer requested by {by}" + (f" ({event_id})" if event_id else ""),
        detail=detail,
    )
    named_acd_id = named.acd_agent_id if named is not None else None
    await uow.outbox.add(_placed(interaction, named_acd_id), now)
    await arm_deadline(uow, interaction, queue, now, named_agent=named_acd_id)


def _placed(interaction: Interaction, named_agent: str | None) -> OutboundMessage:
    """The routing request, naming the agent a transfer asked for (``agent_id``), if any."""
    request = routing_request(interaction)
    if named_agent is not None:
        request.payload["agent_id"] = named_agent
    return request


async def _named_agent(
    uow: UnitOfWork, target: TransferTarget, holder: Agent, interaction: Interaction, now: datetime
) -> Agent | None:
    """The agent a transfer names, if any, checked able to take the work now."""
    if target.agent_id is None and target.crm_agent_id is None:
        return None
    if target.agent_id is not None:
        agent = await uow.agents.get(target.agent_id)
        ref = target.agent_id
    else:
        assert target.crm_agent_id is not None
        agent = await uow.agents.get_by_crm_id(target.crm_agent_id)
        ref = target.crm_agent_id
    if agent is None:
        raise NotFound(f"agent_id: no agent '{ref}'", code="unknown_agent")
    if agent.id == holder.id:
        raise Conflict(
            f"agent {agent.id} holds interaction {interaction.id} already",
            code="agent_unavailable",
        )
    refusal = offer_refusal(agent.channels, await profile_of(uow, agent), interaction.channel, now)
    if refusal is not None:
        raise Conflict(f"agent {agent.id} {refusal}", code="agent_unavailable")
    return agent


async def _offer_ended(
    uow: UnitOfWork,
    interaction: Interaction,
    now: datetime,
    status: OfferStatus,
    reason: str,
) -> None:
    """The live offer ended without the work (the interaction has moved back to routing):
    free the unit, count the miss toward RONA, then select again or overflow."""
    agent = await holding_agent(uow, interaction)
    channel = interaction.channel
    await uow.offers.decide(interaction.id, status, now, reason)
    await release_unit(uow, agent, interaction, now, HARMONY, f"offer_{status.value}", 0)
    interaction.agent_id = None
    profile = await profile_of(uow, agent)
    declined = status == OfferStatus.DECLINED
    # Only an offer the agent let pass counts toward RONA, not one taken back as they left.
    if status != OfferStatus.RESCINDED and profile.counts_as_miss(declined):
        misses = await uow.offers.misses_in_a_row(
            agent.id,
            channel,
            up_to=profile.rona_after,
            declines_count=profile.rona_counts_decline,
        )
        if misses >= profile.rona_after:
            await _rona(uow, agent, interaction, now, misses)
    if status in (OfferStatus.TIMED_OUT, OfferStatus.RESCINDED):
        # The CRM delivered it to the agent's screen: take it back there.
        rescind = {"agent_id": agent.crm_agent_id, "reason": reason}
        await uow.outbox.add(_to_crm(interaction, OFFER_RESCINDED, rescind), now)
    queue = await queue_named(uow, interaction.queue, recent=True)
    if interaction.offers_made >= queue.policy.max_offers:
        # The ACD still holds the agent's unit for this request: the cancel frees it.
        await _give_up(uow, interaction, queue, now, "max_offers", agent.acd_agent_id)
        return
    tried = await uow.offers.agents_tried(interaction.id)
    payload = {
        "agent_id": agent.acd_agent_id,
        "agents_tried": tried,
        "reason": reason,
        "received_at": interaction.received_at.isoformat(),
        "offers_made": interaction.offers_made,
    }
    await uow.outbox.add(_to_acd(interaction, _TOLD_TO_ACD[status], payload), now)
    await arm_deadline(uow, interaction, queue, now)


async def _rona(
    uow: UnitOfWork, agent: Agent, interaction: Interaction, now: datetime, misses: int
) -> None:
    """Make the agent not ready (reason ``rona``) on the channel, on both sides, as any change
    away from ready is made: its other unanswered offers there go back, and while it still holds
    accepted work there, not ready waits as the channel's pending state."""
    channel = interaction.channel
    current = agent.capacity_on(channel)
    if current.status != ChannelStatus.READY:
        return
    leaving = await take_back_work(uow, agent, channel, now)
    if leaving.held > 0:
        after = replace(
            current, next_status=ChannelStatus.NOT_READY, next_reason=RONA_REASON, source_at=now
        )
    else:
        after = replace(
            current,
            status=ChannelStatus.NOT_READY,
            reason=RONA_REASON,
            since=now,
            source_at=now,
            next_status=None,
            next_reason=None,
        )
    await uow.agents.save_channel(agent.id, after)
    agent.channels[channel] = after
    detail = {"interaction_id": interaction.id, "misses": misses, "previous": current.status.value}
    if leaving.held > 0:
        detail.update(leaving.detail(ChannelStatus.NOT_READY))
    await uow.agents.append_history(
        [
            entry_for(
                agent.id,
                after,
                at=now,
                source=HARMONY,
                event="rona",
                outcome=StateOutcome.APPLIED,
                detail={k: v for k, v in detail.items() if v is not None},
            )
        ]
    )
    targets = [(TargetKind.ACD, interaction.acd_adapter), (TargetKind.CRM, agent.crm_adapter)]
    await mirror(uow, agent, channel, targets, now)


async def _give_up(
    uow: UnitOfWork,
    interaction: Interaction,
    queue: Queue,
    now: datetime,
    why: str,
    offered_to: str | None = None,
) -> None:
    """The queue's overflow rule: move the waiting work to the overflow queue (its request
    cancelled at the ACD and placed again there, with the same age), or hand it back to the
    CRM's own routing when the queue names none, the overflow queue is gone or takes another
    channel, or the work has overflowed as often as it may."""
    target = await _overflow_queue(uow, interaction, queue)
    cancelled = {"reason": why}
    if offered_to is not None:
        cancelled["agent_id"] = offered_to
    if target is None:
        await uow.outbox.add(_to_acd(interaction, REQUEST_CANCELLED, cancelled), now)
        interaction.apply(
            Event.HANDED_BACK,
            now,
            cause=f"queue {queue.name}: {why}; handed back to crm:{interaction.crm_adapter}",
            detail={"reason": why, "waited_seconds": _waited(interaction, now)},
        )
        fallback = {"queue": interaction.queue, "reason": why}
        await uow.outbox.add(_to_crm(interaction, INTERACTION_FALLBACK, fallback), now)
        await uow.timers.disarm(TIMER_KIND, interaction.id)
        return
    await uow.outbox.add(_to_acd(interaction, REQUEST_CANCELLED, cancelled), now)
    previous = interaction.queue
    interaction.queue = target.name
    interaction.overflows += 1
    interaction.offers_made = 0
    interaction.max_wait_at = now + timedelta(seconds=target.policy.max_wait_seconds)
    interaction.request_id = f"rr_{random_hex()}"
    interaction.apply(
        Event.OVERFLOWED,
        now,
        cause=f"queue {previous}: {why}; overflow to {target.name}",
        detail={
            "from_queue": previous,
            "to_queue": target.name,
            "reason": why,
            "request_id": interaction.request_id,
        },
    )
    await uow.outbox.add(routing_request(interaction), now)
    await arm_deadline(uow, interaction, target, now)


async def _overflow_queue(uow: UnitOfWork, interaction: Interaction, queue: Queue) -> Queue | None:
    if queue.overflow_queue is None or interaction.overflows >= MAX_OVERFLOWS:
        return None
    target = await uow.queues.get_recent(queue.overflow_queue)
    if target is None or target.channel != interaction.channel or target.name == queue.name:
        return None
    return target


async def on_wrap_up_end(uow: UnitOfWork, timer: Timer, now: datetime) -> None:
    """A channel's wrap-up ended (``scheduled`` kind ``wrap_up``): tell both sides the
    channel's state now, so the CRM's media bar shows the agent free without polling."""
    agent = await uow.agents.get(str(timer.detail["agent_id"]), for_update=True)
    if agent is None:
        return
    channel = Channel(str(timer.detail["channel"]))
    state = agent.capacity_on(channel)
    if state.wrap_up_until is not None and state.wrap_up_until > now:
        # A later end of work started a longer wrap-up: that one's end is told instead.
        await uow.timers.arm(replace(timer, due_at=state.wrap_up_until), now)
        return
    acd_adapter = str(timer.detail["acd_adapter"])
    targets = [(TargetKind.ACD, acd_adapter), (TargetKind.CRM, agent.crm_adapter)]
    await mirror(uow, agent, channel, targets, now)


async def on_deadline(uow: UnitOfWork, timer: Timer, now: datetime) -> None:
    """An interaction's deadline timer fired (``scheduled`` kind ``interaction``): act on the
    deadline if it still holds, else arm the one the interaction's state needs now."""
    interaction = await uow.interactions.get(timer.subject, for_update=True)
    if interaction is None or interaction.is_terminal:
        return
    queue = await queue_named(uow, interaction.queue, recent=True)
    deadline = timer.detail.get("deadline")
    state = interaction.state
    if deadline == Deadline.OFFER and state in (S.OFFERED, S.DELIVERED):
        live = await uow.offers.live(interaction.id)
        if live is not None and live.id == timer.guard and live.status == OfferStatus.PENDING:
            cause = f"offer {live.id} not answered within {queue.policy.offer_timeout_seconds} s"
            interaction.apply(Event.OFFER_TIMED_OUT, now, cause=cause, detail={"offer_id": live.id})
            await _offer_ended(uow, interaction, now, OfferStatus.TIMED_OUT, "timed_out")
            await uow.interactions.save(interaction)
            return
    elif deadline == AGENT_LEFT and state in (S.OFFERED, S.DELIVERED):
        live = await uow.offers.live(interaction.id)
        if live is not None and live.id == timer.guard and live.status == OfferStatus.PENDING:
            cause = f"agent {live.agent_id} left {interaction.channel.value} before answering"
            interaction.apply(Event.OFFER_RESCINDED, now, cause=cause, detail={"offer_id": live.id})
            await _offer_ended(uow, interaction, now, OfferStatus.RESCINDED, "agent_left")
            await uow.interactions.save(interaction)
            return
    elif deadline == RETURN_TO_QUEUE and state == S.ACCEPTED:
        live = await uow.offers.live(interaction.id)
        if live is not None and live.id == timer.guard:
            target = TransferTarget(queue=interaction.queue)
            await _transfer(uow, interaction, target, HARMONY, now, HARMONY)
            await uow.interactions.save(interaction)
            return
    elif deadline == Deadline.ROUTING and state == S.ROUTING:
        placements = int(timer.detail.get("placements", 1))
        bound = queue.policy.routing_timeout_seconds
        if placements >= 2:
            await _give_up(uow, interaction, queue, now, "routing_timeout")
        else:
            interaction.apply(
                Event.ROUTING_TIMED_OUT,
                now,
                cause=f"acd:{interaction.acd_adapter} answered request "
                f"{interaction.request_id} neither with a selection nor queued in {bound} s",
                detail={"request_id": interaction.request_id, "placement": placements + 1},
            )
            named = timer.detail.get("agent_id")
            named_acd_id = str(named) if named is not None else None
            await uow.outbox.add(_placed(interaction, named_acd_id), now)
            await arm_deadline(
                uow, interaction, queue, now, placements=placements + 1, named_agent=named_acd_id
            )
        await uow.interactions.save(interaction)
        return
    elif deadline == Deadline.MAX_WAIT and state in WAITING_STATES:
        max_wait_at = interaction.max_wait_at
        if max_wait_at is not None and max_wait_at <= now:
            await _give_up(uow, interaction, queue, now, "max_wait")
            await uow.interactions.save(interaction)
            return
    # The deadline no longer holds (what it guarded changed without re-arming it), or it was
    # a ``check`` (migration 0009 armed one for work stored before timers): arm what is due.
    if state in WAITING_STATES and interaction.max_wait_at is None:
        wait = timedelta(seconds=queue.policy.max_wait_seconds)
        interaction.max_wait_at = interaction.received_at + wait
        await uow.interactions.save(interaction)
    await arm_deadline(uow, interaction, queue, now, offer=await uow.offers.live(interaction.id))
