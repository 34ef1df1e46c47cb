"""Use cases for agent state: what the CRM's media bar, the ACD and supervisors report.

Each reported change is ordered, checked against Harmony's own mirrors (an echo is recognised,
not re-applied), applied per channel, recorded in the agent's append-only history, and mirrored
through the outbox to the other side so both show the same.

Ordering never compares one peer's clock with another's (a CRM running two minutes fast would
hide the ACD's later changes; one event dated 9999 would freeze a channel for good). A source
that numbers its events (``sequence``, per agent and source) is ordered by its own numbers;
otherwise the later arrival at Harmony wins. A supervisor's change always arrives last. The
peer's ``occurred_at`` is kept as data (``source_at``), clamped to Harmony's now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from harmony.errors import Conflict, NotFound, ValidationFailed
from harmony.routing.agent_state import (
    AgentStateEntry,
    Profile,
    StateOutcome,
    default_profile,
    entry_for,
    operator_refusal,
    presence,
)
from harmony.routing.deadlines import TIMER_KIND
from harmony.routing.messages import AGENT_CAPACITY, AGENT_STATE, OutboundMessage, TargetKind
from harmony.routing.model import (
    Agent,
    Channel,
    ChannelState,
    ChannelStatus,
    OfferStatus,
    validate_capacity,
)
from harmony.routing.ports import AgentFilter, Clock, Timer, UnitOfWork, VoiceCall

# How long after Harmony mirrors a change a matching report from that side counts as its echo.
ECHO_WINDOW = timedelta(seconds=60)
OPERATOR = "operator"


@dataclass(frozen=True)
class Reporter:
    """Who reports a change: a CRM or ACD adapter, or a supervisor through the API."""

    kind: TargetKind | None  # None for an operator
    name: str

    @property
    def source(self) -> str:
        return f"{self.kind.value}:{self.name}" if self.kind else OPERATOR

    @classmethod
    def operator(cls) -> Reporter:
        return cls(None, OPERATOR)


@dataclass(frozen=True)
class StateReport:
    """A reported change of login or readiness on some channels of one agent.

    ``channels=None`` means: for a login, every channel the agent has capacity on; otherwise
    every channel the agent is logged into.
    """

    event: str
    status: ChannelStatus
    reason: str | None = None
    channels: tuple[Channel, ...] | None = None
    occurred_at: datetime | None = None
    sequence: int | None = None
    echo_of: str | None = None


@dataclass(frozen=True)
class AgentOutcome:
    """What a reported change did, channel by channel."""

    agent_id: str
    outcomes: dict[Channel, StateOutcome]
    duplicate: bool = False

    @property
    def summary(self) -> str:
        """``duplicate``, ``applied`` if any channel changed, else the first channel's outcome."""
        if self.duplicate:
            return "duplicate"
        values = list(self.outcomes.values())
        if StateOutcome.APPLIED in values or not values:
            return StateOutcome.APPLIED.value if values else StateOutcome.UNCHANGED.value
        return values[0].value


async def _load_agent(uow: UnitOfWork, reporter: Reporter, agent_ref: str) -> Agent:
    if reporter.kind == TargetKind.ACD:
        agent = await uow.agents.get_by_acd_id(agent_ref, for_update=True)
    elif reporter.kind == TargetKind.CRM:
        agent = await uow.agents.get_by_crm_id(agent_ref, for_update=True)
    else:
        agent = await uow.agents.get(agent_ref, for_update=True)
    if agent is None:
        raise NotFound(f"data.agent_id: no agent '{agent_ref}'", code="unknown_agent")
    return agent


async def profile_of(uow: UnitOfWork, agent: Agent) -> Profile:
    """The agent's profile (the built-in default if its row is missing)."""
    return await uow.profiles.get(agent.profile) or default_profile()


def mirror_ordering_key(agent_id: str, target: TargetKind, target_name: str) -> str:
    """Mirrors of one agent to one peer share a sequence and go out one at a time, in order."""
    return f"agent:{agent_id}>{target.value}:{target_name}"


def mirror_message(
    agent: Agent,
    channel: Channel,
    target: TargetKind,
    target_name: str,
    now: datetime,
    sequence: int,
) -> OutboundMessage:
    """``agent.state`` for one channel, addressed with the target's own agent id.

    ``changed_at`` is when Harmony applied the change and ``sequence`` its place among this
    agent's mirrors to this target: a peer applies a mirror only if its sequence is newer than
    the last it applied. A newer mirror of the same channel supersedes an unsent older one.
    """
    state = agent.capacity_on(channel)
    ordering_key = mirror_ordering_key(agent.id, target, target_name)
    return OutboundMessage(
        target_kind=target,
        target=target_name,
        type=AGENT_STATE,
        interaction_id="",
        payload={
            "agent_id": agent.acd_agent_id if target == TargetKind.ACD else agent.crm_agent_id,
            "channel": channel.value,
            "state": state.status.value,
            "reason": state.reason,
            "load": state.load,
            "capacity": state.capacity,
            "busy": state.busy(now),
            "wrap_up_until": state.wrap_up_until.isoformat() if state.wrap_up_until else None,
            "presence": presence(agent.channels.values(), now).value,
            # Set while a not ready or log out waits for the channel's work to end: offer
            # nothing more on the channel meanwhile.
            "pending_state": state.next_status.value if state.next_status else None,
            "pending_reason": state.next_reason,
            "changed_at": now.isoformat(),
            "sequence": sequence,
        },
        ordering_key=ordering_key,
        sequence=sequence,
        supersede_key=f"{ordering_key}/{AGENT_STATE}/{channel.value}",
    )


async def mirror(
    uow: UnitOfWork,
    agent: Agent,
    channel: Channel,
    targets: list[tuple[TargetKind, str]],
    now: datetime,
) -> None:
    """Tell each target the channel's state now, and remember it to recognise the echo."""
    state = agent.capacity_on(channel)
    for kind, name in targets:
        sequence = await uow.outbox.next_sequence(mirror_ordering_key(agent.id, kind, name))
        message = mirror_message(agent, channel, kind, name, now, sequence)
        await uow.outbox.add(message, now)
        await uow.agents.add_mirror(
            message.id, agent.id, channel, kind, state.status, state.reason, now
        )


def selection_rules(agent: Agent, profile: Profile) -> dict[str, object]:
    """What the ACD needs to choose this agent right: its capacity per channel (the agent's own
    override or its profile's) and its profile's cross-channel blocks and wrap-up."""
    return {
        "profile": profile.name,
        "capacity": {c.value: agent.capacity_on(c).capacity for c in Channel},
        "blocks": {c.value: sorted(b.value for b in profile.blocks.get(c, ())) for c in Channel},
        "wrap_up_seconds": {c.value: profile.wrap_up_seconds.get(c, 0) for c in Channel},
    }


async def mirror_capacity(
    uow: UnitOfWork, agent: Agent, profile: Profile, acd_adapter: str, now: datetime
) -> None:
    """Tell the ACD the agent's capacities and rules (``agent.capacity``), in sequence with the
    agent's ``agent.state`` mirrors; it supersedes an unsent older one."""
    ordering_key = mirror_ordering_key(agent.id, TargetKind.ACD, acd_adapter)
    sequence = await uow.outbox.next_sequence(ordering_key)
    message = OutboundMessage(
        target_kind=TargetKind.ACD,
        target=acd_adapter,
        type=AGENT_CAPACITY,
        interaction_id="",
        payload={
            "agent_id": agent.acd_agent_id,
            **selection_rules(agent, profile),
            "changed_at": now.isoformat(),
            "sequence": sequence,
        },
        ordering_key=ordering_key,
        sequence=sequence,
        supersede_key=f"{ordering_key}/{AGENT_CAPACITY}",
    )
    await uow.outbox.add(message, now)


async def _mirror_profile_members(
    uow: UnitOfWork, profile: Profile, acd_adapter: str, now: datetime
) -> None:
    cursor: str | None = None
    while True:
        page = await uow.agents.search(AgentFilter(profile=profile.name), now, 500, cursor)
        for agent in page.items:
            await mirror_capacity(uow, agent, profile, acd_adapter, now)
        cursor = page.next_cursor
        if cursor is None:
            return


def mirror_targets(
    reporter: Reporter, agent: Agent, acd_adapter: str
) -> list[tuple[TargetKind, str]]:
    """A change from one side goes to the other; a supervisor's goes to both."""
    to_acd, to_crm = (TargetKind.ACD, acd_adapter), (TargetKind.CRM, agent.crm_adapter)
    if reporter.kind == TargetKind.CRM:
        return [to_acd]
    if reporter.kind == TargetKind.ACD:
        return [to_crm]
    return [to_acd, to_crm]


def _channels_for(agent: Agent, report: StateReport) -> tuple[Channel, ...]:
    if report.channels is not None:
        return tuple(sorted(report.channels))  # the lock order: chat, email, voice
    if report.status != ChannelStatus.LOGGED_OUT and report.event.endswith("logged_in"):
        return tuple(c for c, s in sorted(agent.channels.items()) if s.capacity > 0)
    return tuple(
        c for c, s in sorted(agent.channels.items()) if s.status != ChannelStatus.LOGGED_OUT
    )


def check_reason(report: StateReport, reasons: tuple[str, ...]) -> str | None:
    """The reason to store: validated for not ready (default ``other``, else the first
    configured one), dropped otherwise."""
    if report.status != ChannelStatus.NOT_READY:
        return None
    reason = report.reason or ("other" if "other" in reasons else reasons[0])
    if reason not in reasons:
        raise ValidationFailed(
            f"data.reason: '{reason}' is not a configured not-ready reason ({', '.join(reasons)})"
        )
    return reason


@dataclass
class _Change:
    """One agent event being applied: the locked agent and the history it writes."""

    uow: UnitOfWork
    agent: Agent
    reporter: Reporter
    event: str
    now: datetime
    source_at: datetime
    sequence: int | None = None
    entries: list[AgentStateEntry] = field(default_factory=list)
    outcomes: dict[Channel, StateOutcome] = field(default_factory=dict)

    def record(self, state: ChannelState, outcome: StateOutcome, **detail: object) -> None:
        """Add a history line for the channel's values after this event."""
        self.outcomes[state.channel] = outcome
        self.entries.append(
            entry_for(
                self.agent.id,
                state,
                at=self.now,
                source=self.reporter.source,
                event=self.event,
                outcome=outcome,
                source_at=self.source_at,
                sequence=self.sequence,
                detail={k: v for k, v in detail.items() if v is not None},
            )
        )

    async def store(self, state: ChannelState) -> None:
        """Save a channel's new status fields and keep the in-memory agent in step."""
        await self.uow.agents.save_channel(self.agent.id, state)
        self.agent.channels[state.channel] = state

    async def mirror_to_crm(self, channel: Channel) -> None:
        await mirror(
            self.uow, self.agent, channel, [(TargetKind.CRM, self.agent.crm_adapter)], self.now
        )


async def _apply(
    uow: UnitOfWork,
    clock: Clock,
    reporter: Reporter,
    event_id: str | None,
    event: str,
    agent_ref: str,
    occurred_at: datetime | None,
    body: Callable[[_Change], Awaitable[None]],
    sequence: int | None = None,
) -> AgentOutcome:
    """De-duplicate, lock the agent, run ``body``, append its history and commit."""
    async with uow:
        if (
            event_id is not None
            and reporter.kind is not None
            and not await uow.inbox.claim(reporter.source, event_id, event, clock.now())
        ):
            agent = await _load_agent(uow, reporter, agent_ref)
            return AgentOutcome(agent.id, {}, duplicate=True)
        agent = await _load_agent(uow, reporter, agent_ref)
        now = clock.now()
        source_at = min(occurred_at, now) if occurred_at is not None else now
        change = _Change(uow, agent, reporter, event, now, source_at, sequence)
        await body(change)
        await uow.agents.append_history(change.entries)
        await uow.commit()
        return AgentOutcome(agent.id, change.outcomes)


# Deadline of an offer whose agent left before answering (routing.rerouting.on_deadline).
AGENT_LEFT = "agent_left"
# Deadline of accepted email that goes back to its queue when its agent leaves.
RETURN_TO_QUEUE = "return_to_queue"
WRAP_UP_TIMER = "wrap_up"


def wrap_up_timer(agent: Agent, channel: Channel, until: datetime, acd_adapter: str) -> Timer:
    """The timer that tells both sides when the channel's wrap-up ends."""
    return Timer(
        WRAP_UP_TIMER,
        f"{agent.id}/{channel.value}",
        until,
        detail={"agent_id": agent.id, "channel": channel.value, "acd_adapter": acd_adapter},
    )


async def apply_pending_state(
    uow: UnitOfWork, agent: Agent, channel: Channel, now: datetime, acd_adapter: str, cause: str
) -> bool:
    """The agent's last work on ``channel`` ended: apply the state asked for meanwhile (if
    any), record it and tell both sides. The agent is held locked; ``agent.channels`` is
    current. True if a pending state was applied."""
    state = agent.capacity_on(channel)
    if state.next_status is None or state.load > 0:
        return False
    applied = replace(
        state,
        status=state.next_status,
        reason=state.next_reason,
        since=now,
        next_status=None,
        next_reason=None,
    )
    await uow.agents.save_channel(agent.id, applied)
    agent.channels[channel] = applied
    await uow.agents.append_history(
        [
            entry_for(
                agent.id,
                applied,
                at=now,
                source=OPERATOR if cause == OPERATOR else "harmony",
                event="pending_state_applied",
                outcome=StateOutcome.APPLIED,
                detail={"previous": state.status.value, "cause": cause},
            )
        ]
    )
    targets = [(TargetKind.ACD, acd_adapter), (TargetKind.CRM, agent.crm_adapter)]
    await mirror(uow, agent, channel, targets, now)
    return True


@dataclass(frozen=True)
class Leaving:
    """What an agent leaving a channel (not ready, logged out, RONA) does to its work there:
    units still held once the unanswered offers are taken back, and which interactions were
    taken back, go back to their queue, or stay with the agent."""

    held: int
    rescinded: list[str]
    returning: list[str]
    staying: list[str]

    def detail(self, status: ChannelStatus) -> dict[str, object]:
        """The history's account of it (a warning when accepted work stays)."""
        return {
            "pending": status.value,
            "holding": self.held,
            "rescinded": self.rescinded or None,
            "returning": self.returning or None,
            # Accepted work stays with the agent until they finish it: said where recorded.
            "warning": (
                f"{status.value} waits for accepted work {self.staying}" if self.staying else None
            ),
        }


async def take_back_work(uow: UnitOfWork, agent: Agent, channel: Channel, now: datetime) -> Leaving:
    """The agent leaves ``channel``: its offers not yet answered there are taken back at once
    (their interactions' deadlines fall due now, guarded by the offer), and its accepted email
    goes back to its queue where the profile says so. The agent is held locked."""
    live = await uow.offers.live_of_agent(agent.id, channel)
    pending = [offer for offer in live if offer.status == OfferStatus.PENDING]
    accepted = [offer for offer in live if offer.status == OfferStatus.ACCEPTED]
    for offer in pending:
        timer = Timer(
            TIMER_KIND, offer.interaction_id, now, guard=offer.id, detail={"deadline": AGENT_LEFT}
        )
        await uow.timers.arm(timer, now)
    returning: list[str] = []
    if channel == Channel.EMAIL and (await profile_of(uow, agent)).return_accepted_email:
        for offer in accepted:
            timer = Timer(
                TIMER_KIND,
                offer.interaction_id,
                now,
                guard=offer.id,
                detail={"deadline": RETURN_TO_QUEUE},
            )
            await uow.timers.arm(timer, now)
            returning.append(offer.interaction_id)
    return Leaving(
        held=agent.capacity_on(channel).load - len(pending),
        rescinded=[offer.interaction_id for offer in pending],
        returning=returning,
        staying=[o.interaction_id for o in accepted if o.interaction_id not in returning],
    )


async def _leave_with_work(
    change: _Change, channel: Channel, status: ChannelStatus, reason: str | None, acd_adapter: str
) -> bool:
    """A not ready or log out on a channel where the agent holds work (``take_back_work``):
    what is still held makes the change the channel's pending next state (True), applied when
    the last work ends."""
    uow, agent, now = change.uow, change.agent, change.now
    leaving = await take_back_work(uow, agent, channel, now)
    if leaving.held <= 0:
        return False
    current = agent.channels[channel]
    waiting = replace(current, next_status=status, next_reason=reason, source_at=change.source_at)
    await change.store(waiting)
    change.record(waiting, StateOutcome.APPLIED, **leaving.detail(status))
    await mirror(uow, agent, channel, mirror_targets(change.reporter, agent, acd_adapter), now)
    return True


async def report_state(
    uow: UnitOfWork,
    clock: Clock,
    *,
    reporter: Reporter,
    event_id: str | None,
    agent_ref: str,
    report: StateReport,
    reasons: tuple[str, ...],
    acd_adapter: str,
) -> AgentOutcome:
    """Apply a login, logout or readiness change from the CRM, the ACD or a supervisor.

    A supervisor's change that the rules refuse raises Conflict and changes nothing. Changes
    from the CRM or ACD are never refused for their transition: they report what already
    happened there. They are ignored when their ``sequence`` is at or below the last one applied
    from the same source, or when they are the echo of Harmony's own mirrored change; without a
    sequence, the later arrival wins.
    """

    async def body(change: _Change) -> None:
        agent = change.agent
        reason = check_reason(report, reasons)
        channels = _channels_for(agent, report)
        unknown = [c for c in channels if c not in agent.channels]
        if unknown:
            raise ValidationFailed(
                f"data.channels: agent has no channel {unknown[0].value}", code="unknown_channel"
            )
        if reporter.kind is None:
            for channel in channels:
                refusal = operator_refusal(agent.channels[channel], report.status)
                if refusal:
                    raise Conflict(refusal, code="transition_not_allowed")
        stale_sequence = False
        if report.sequence is not None:
            last = await uow.agents.last_sequence(agent.id, reporter.source)
            stale_sequence = last is not None and report.sequence <= last
            if not stale_sequence:
                await uow.agents.set_sequence(agent.id, reporter.source, report.sequence)
        reported = {"reported": report.status.value, "reason": reason}
        for channel in channels:
            current = agent.channels[channel]
            if stale_sequence:
                change.record(current, StateOutcome.STALE, **reported)
            elif reporter.kind is not None and await uow.agents.take_echo(
                agent.id,
                channel,
                reporter.kind,
                report.status,
                reason,
                change.now - ECHO_WINDOW,
                report.echo_of,
                change.now,
            ):
                change.record(current, StateOutcome.ECHO, **reported)
            elif current.next_status is not None and report.status == ChannelStatus.READY:
                # A later ready cancels the pending not ready or log out.
                await change.store(
                    replace(
                        current,
                        status=ChannelStatus.READY,
                        reason=None,
                        next_status=None,
                        next_reason=None,
                        source_at=change.source_at,
                    )
                )
                change.record(
                    agent.channels[channel],
                    StateOutcome.APPLIED,
                    cancelled_pending=current.next_status.value,
                )
                targets = mirror_targets(reporter, agent, acd_adapter)
                await mirror(uow, agent, channel, targets, change.now)
            elif current.status == report.status and current.reason == reason:
                await change.store(replace(current, source_at=change.source_at))
                change.record(agent.channels[channel], StateOutcome.UNCHANGED)
            elif (
                report.status != ChannelStatus.READY
                and current.load > 0
                and await _leave_with_work(change, channel, report.status, reason, acd_adapter)
            ):
                pass
            else:
                await change.store(
                    replace(
                        current,
                        status=report.status,
                        reason=reason,
                        since=change.now,
                        source_at=change.source_at,
                        next_status=None,
                        next_reason=None,
                    )
                )
                change.record(
                    agent.channels[channel], StateOutcome.APPLIED, previous=current.status.value
                )
                targets = mirror_targets(reporter, agent, acd_adapter)
                await mirror(uow, agent, channel, targets, change.now)

    return await _apply(
        uow,
        clock,
        reporter,
        event_id,
        report.event,
        agent_ref,
        report.occurred_at,
        body,
        report.sequence,
    )


async def login_failed(
    uow: UnitOfWork,
    clock: Clock,
    *,
    acd_adapter: str,
    event_id: str,
    acd_agent_id: str,
    channels: tuple[Channel, ...] | None,
    reason: str,
    occurred_at: datetime,
) -> AgentOutcome:
    """The ACD refused a login: count it, log the channels out, show the CRM."""

    async def body(change: _Change) -> None:
        agent = change.agent
        await uow.agents.count_login_failure(agent.id)
        targets = (
            tuple(sorted(channels))
            if channels
            else tuple(
                c for c, s in sorted(agent.channels.items()) if s.status != ChannelStatus.LOGGED_OUT
            )
        )
        for channel in targets:
            current = agent.capacity_on(channel)
            if current.status == ChannelStatus.LOGGED_OUT:
                change.record(current, StateOutcome.UNCHANGED, reason=reason)
            else:
                await change.store(
                    replace(
                        current,
                        status=ChannelStatus.LOGGED_OUT,
                        reason=None,
                        since=change.now,
                        source_at=change.source_at,
                    )
                )
                change.record(agent.channels[channel], StateOutcome.APPLIED, reason=reason)
                await change.mirror_to_crm(channel)

    reporter = Reporter(TargetKind.ACD, acd_adapter)
    return await _apply(
        uow, clock, reporter, event_id, "agent.login_failed", acd_agent_id, occurred_at, body
    )


async def voice_started(
    uow: UnitOfWork,
    clock: Clock,
    *,
    acd_adapter: str,
    event_id: str,
    acd_agent_id: str,
    call_id: str,
    occurred_at: datetime,
) -> AgentOutcome:
    """A call reached the agent at the ACD (queued or not): it counts on the voice channel.

    The call is a fact, not a request: beyond the agent's voice capacity (a second call, or a
    direct dial to an agent whose profile has no voice capacity) it is recorded all the same and
    the agent shows over capacity; the profile's blocking rule for voice applies while it lasts.
    """

    async def body(change: _Change) -> None:
        agent = change.agent
        voice = agent.capacity_on(Channel.VOICE)
        if await uow.agents.voice_call(acd_adapter, call_id) is not None:
            # Already started (a repeat under a new event id), or its end overtook its start.
            change.record(voice, StateOutcome.STALE, call_id=call_id)
            return
        within = await uow.agents.reserve(agent.id, Channel.VOICE, require_ready=False)
        if not within:
            await uow.agents.hold_over_capacity(agent.id, Channel.VOICE)
        await uow.agents.save_voice_call(
            VoiceCall(acd_adapter, call_id, agent.id, change.source_at, None)
        )
        agent.channels[Channel.VOICE] = replace(voice, load=voice.load + 1)
        change.record(
            agent.channels[Channel.VOICE],
            StateOutcome.APPLIED,
            call_id=call_id,
            over_capacity=True if not within else None,
        )
        await change.mirror_to_crm(Channel.VOICE)

    reporter = Reporter(TargetKind.ACD, acd_adapter)
    return await _apply(
        uow, clock, reporter, event_id, "voice.started", acd_agent_id, occurred_at, body
    )


async def voice_ended(
    uow: UnitOfWork,
    clock: Clock,
    *,
    acd_adapter: str,
    event_id: str,
    acd_agent_id: str,
    call_id: str,
    occurred_at: datetime,
    wrap_up_seconds: int | None,
) -> AgentOutcome:
    """A call ended: free the voice channel and start its wrap-up."""

    async def body(change: _Change) -> None:
        agent = change.agent
        voice = agent.capacity_on(Channel.VOICE)
        call = await uow.agents.voice_call(acd_adapter, call_id)
        if call is None or call.ended_at is not None or call.started_at is None:
            # Never started here (its start may still arrive: remember the end) or ended already.
            if call is None:
                await uow.agents.save_voice_call(
                    VoiceCall(acd_adapter, call_id, agent.id, None, change.source_at)
                )
            change.record(voice, StateOutcome.STALE, call_id=call_id)
            return
        if call.agent_id != agent.id:
            # Another agent holds this call: freeing this agent's voice would let it be offered
            # work while on its own call, and leave the holder busy for ever.
            change.record(voice, StateOutcome.STALE, call_id=call_id, held_by=call.agent_id)
            return
        profile = await profile_of(uow, agent)
        seconds = (
            wrap_up_seconds
            if wrap_up_seconds is not None
            else profile.wrap_up_seconds.get(Channel.VOICE, 0)
        )
        wrap_up_until = change.now + timedelta(seconds=seconds) if seconds > 0 else None
        await uow.agents.release(agent.id, Channel.VOICE, wrap_up_until)
        await uow.agents.save_voice_call(replace(call, ended_at=change.source_at))
        agent.channels[Channel.VOICE] = replace(
            voice,
            load=max(voice.load - 1, 0),
            wrap_up_until=wrap_up_until or voice.wrap_up_until,
        )
        change.record(
            agent.channels[Channel.VOICE],
            StateOutcome.APPLIED,
            call_id=call_id,
            wrap_up_seconds=seconds,
        )
        if wrap_up_until is not None:
            await uow.timers.arm(
                wrap_up_timer(agent, Channel.VOICE, wrap_up_until, acd_adapter), change.now
            )
        if not await apply_pending_state(
            uow, agent, Channel.VOICE, change.now, acd_adapter, f"voice.ended {call_id}"
        ):
            await change.mirror_to_crm(Channel.VOICE)

    reporter = Reporter(TargetKind.ACD, acd_adapter)
    return await _apply(
        uow, clock, reporter, event_id, "voice.ended", acd_agent_id, occurred_at, body
    )


async def upsert_profile(
    uow: UnitOfWork, clock: Clock, profile: Profile, *, acd_adapter: str | None = None
) -> None:
    """Create or replace a profile; its agents' capacities follow unless overridden.

    When a stored profile changes, each of its agents' new capacities and rules are mirrored to
    ``acd_adapter`` (``agent.capacity``); ``None`` tells no ACD.
    """
    for channel, wanted in profile.capacity.items():
        validate_capacity({channel: wanted})
    async with uow:
        before = await uow.profiles.get(profile.name)
        changed = await uow.profiles.upsert(profile)
        now = clock.now()
        await uow.agents.append_history(
            [
                entry_for(
                    agent_id,
                    state,
                    at=now,
                    source=OPERATOR,
                    event="profile_changed",
                    outcome=StateOutcome.APPLIED,
                    detail={"profile": profile.name},
                )
                for agent_id, state in changed
            ]
        )
        if acd_adapter is not None and before is not None and _rules(before) != _rules(profile):
            await _mirror_profile_members(uow, profile, acd_adapter, now)
        await uow.commit()


def _rules(profile: Profile) -> tuple[object, ...]:
    return tuple(
        (
            profile.capacity.get(c, 0),
            profile.wrap_up_seconds.get(c, 0),
            sorted(profile.blocks.get(c, ())),
        )
        for c in Channel
    )
