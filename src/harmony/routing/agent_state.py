"""Agent state per channel: login, readiness, wrap-up, load, and the rules that gate offers.

No I/O here. The service applies these rules inside a unit of work that has locked the agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from harmony.routing.model import (
    DEFAULT_PROFILE,
    Channel,
    ChannelState,
    ChannelStatus,
)


class Presence(StrEnum):
    """One word for a wallboard, derived from every channel."""

    LOGGED_OUT = "logged_out"
    NOT_READY = "not_ready"
    READY = "ready"
    BUSY = "busy"
    WRAP_UP = "wrap_up"


class StateOutcome(StrEnum):
    """What became of one reported change, as the agent's history records it."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"
    STALE = "ignored_stale"
    ECHO = "echo"


DEFAULT_NOT_READY_REASONS = (
    "break",
    "lunch",
    "meeting",
    "training",
    "coaching",
    "after_call",
    "login",
    "rona",
    "supervisor",
    "other",
)


@dataclass(frozen=True)
class Profile:
    """Capacities, wrap-up and cross-channel rules shared by a group of agents.

    ``blocks[c]`` lists the channels that get no offers while the agent holds work on ``c``:
    ``{voice: {chat, email}}`` is "no chat or email while on a call"; leaving chat out of
    ``blocks[email]`` is "chat may interrupt email".

    RONA (redirection on no answer): after ``rona_after`` offers missed in a row on a channel
    the agent is made not ready there with reason ``rona`` (0: never); an offer that timed out
    is a miss, a declined one too when ``rona_counts_decline``.
    """

    name: str
    capacity: Mapping[Channel, int]
    wrap_up_seconds: Mapping[Channel, int] = field(default_factory=dict)
    blocks: Mapping[Channel, frozenset[Channel]] = field(default_factory=dict)
    rona_after: int = 1
    rona_counts_decline: bool = False
    # Accepted email goes back to its queue when its agent goes not ready or logs out on email
    # (chats always stay with the agent until they end).
    return_accepted_email: bool = False

    @classmethod
    def from_names(
        cls,
        name: str,
        capacity: Mapping[Any, int],
        wrap_up_seconds: Mapping[Any, int],
        blocks: Mapping[Any, Iterable[Any]],
        rona_after: int = 1,
        rona_counts_decline: bool = False,
        return_accepted_email: bool = False,
    ) -> Profile:
        """Build from channel names, as JSON carries them; ValueError for an unknown channel."""
        return cls(
            name=name,
            capacity={Channel(c): int(n) for c, n in capacity.items()},
            wrap_up_seconds={Channel(c): int(n) for c, n in wrap_up_seconds.items()},
            blocks={Channel(c): frozenset(Channel(b) for b in bs) for c, bs in blocks.items()},
            rona_after=rona_after,
            rona_counts_decline=rona_counts_decline,
            return_accepted_email=return_accepted_email,
        )

    def counts_as_miss(self, declined: bool) -> bool:
        """Whether an offer that ended so counts toward RONA."""
        return self.rona_after > 0 and (not declined or self.rona_counts_decline)

    def as_names(self) -> dict[str, Any]:
        """Capacity, wrap-up and blocks keyed by channel name, as JSON carries them."""
        return {
            "capacity": {c.value: n for c, n in sorted(self.capacity.items())},
            "wrap_up_seconds": {c.value: n for c, n in sorted(self.wrap_up_seconds.items())},
            "blocks": {
                c.value: sorted(b.value for b in bs) for c, bs in sorted(self.blocks.items())
            },
        }

    def blocker(self, channels: Mapping[Channel, ChannelState], wanted: Channel) -> Channel | None:
        """The channel whose work blocks an offer on ``wanted``, if any."""
        for channel, state in sorted(channels.items()):
            if channel != wanted and state.load > 0 and wanted in self.blocks.get(channel, ()):
                return channel
        return None


def default_profile() -> Profile:
    """Voice blocks digital work; chat blocks email; email may be interrupted by chat."""
    return Profile(
        name=DEFAULT_PROFILE,
        capacity={Channel.VOICE: 1, Channel.CHAT: 3, Channel.EMAIL: 2},
        wrap_up_seconds={Channel.VOICE: 0, Channel.CHAT: 0, Channel.EMAIL: 0},
        blocks={
            Channel.VOICE: frozenset({Channel.CHAT, Channel.EMAIL}),
            Channel.CHAT: frozenset({Channel.EMAIL}),
            Channel.EMAIL: frozenset(),
        },
    )


def presence(channels: Iterable[ChannelState], now: datetime) -> Presence:
    """Busy beats wrap-up beats ready beats not ready; logged out only when every channel is."""
    # One pass: a page of agents computes this for every agent.
    signed_in = wrapping = ready = False
    for state in channels:
        if state.load > 0:
            return Presence.BUSY
        status = state.status
        if status != ChannelStatus.LOGGED_OUT:
            signed_in = True
            ready = ready or status == ChannelStatus.READY
        if state.wrap_up_until is not None and state.wrap_up_until > now:
            wrapping = True
    if not signed_in:
        return Presence.LOGGED_OUT
    if wrapping:
        return Presence.WRAP_UP
    return Presence.READY if ready else Presence.NOT_READY


def offer_refusal(
    channels: Mapping[Channel, ChannelState], profile: Profile, wanted: Channel, now: datetime
) -> str | None:
    """Why this agent cannot be offered work on ``wanted`` now, or None if it can."""
    state = channels.get(wanted, ChannelState(wanted, 0, 0))
    if state.status != ChannelStatus.READY:
        why = f" ({state.reason})" if state.reason else ""
        return f"is {state.status.value}{why} on {wanted.value}"
    if state.next_status is not None:
        return f"goes {state.next_status.value} on {wanted.value} once its work there ends"
    if state.in_wrap_up(now):
        assert state.wrap_up_until is not None
        return f"is in wrap-up on {wanted.value} until {state.wrap_up_until.isoformat()}"
    if state.load >= state.capacity:
        return f"has no free {wanted.value} capacity ({state.load}/{state.capacity})"
    blocker = profile.blocker(channels, wanted)
    if blocker is not None:
        return (
            f"is busy on {blocker.value}; profile '{profile.name}' blocks {wanted.value} "
            f"offers meanwhile"
        )
    return None


def operator_refusal(state: ChannelState, target: ChannelStatus) -> str | None:
    """Why a supervisor may not move this channel to ``target``, or None if allowed.

    Supervisors may log agents out and toggle ready / not ready; only the agent logs in.
    """
    if state.status == ChannelStatus.LOGGED_OUT and target != ChannelStatus.LOGGED_OUT:
        return (
            f"agent is not logged into {state.channel.value}; only the agent can log in, "
            f"so it cannot be made {target.value}"
        )
    if target == ChannelStatus.LOGGED_OUT and state.load > 0:
        return (
            f"agent holds {state.load} {state.channel.value} interaction(s); "
            "they must end before a logout"
        )
    if target == ChannelStatus.READY and state.capacity == 0:
        return f"agent has no {state.channel.value} capacity, so cannot be ready on it"
    return None


@dataclass(frozen=True)
class AgentStateEntry:
    """One append-only line of an agent's state history.

    ``status``, ``reason``, ``load``, ``capacity`` and ``wrap_up_until`` are the channel's values
    after the entry; entries with outcome ``applied`` replay to the current state.
    """

    agent_id: str
    at: datetime
    channel: Channel | None
    source: str
    event: str
    outcome: StateOutcome
    status: ChannelStatus | None
    reason: str | None
    load: int | None
    capacity: int | None
    wrap_up_until: datetime | None
    source_at: datetime | None = None
    sequence: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def entry_for(
    agent_id: str,
    state: ChannelState,
    *,
    at: datetime,
    source: str,
    event: str,
    outcome: StateOutcome,
    source_at: datetime | None = None,
    sequence: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AgentStateEntry:
    """A history line recording ``state`` as the channel's values after the event."""
    return AgentStateEntry(
        agent_id=agent_id,
        at=at,
        channel=state.channel,
        source=source,
        event=event,
        outcome=outcome,
        status=state.status,
        reason=state.reason,
        load=state.load,
        capacity=state.capacity,
        wrap_up_until=state.wrap_up_until,
        source_at=source_at,
        sequence=sequence,
        detail=detail or {},
    )


@dataclass(frozen=True)
class ReplayedChannel:
    status: ChannelStatus
    reason: str | None
    load: int
    capacity: int
    wrap_up_until: datetime | None


def replay(entries: Iterable[AgentStateEntry]) -> dict[Channel, ReplayedChannel]:
    """The per-channel state the applied history entries lead to, oldest entry first."""
    result: dict[Channel, ReplayedChannel] = {}
    for entry in entries:
        if entry.outcome != StateOutcome.APPLIED or entry.channel is None:
            continue
        assert entry.status is not None and entry.load is not None and entry.capacity is not None
        result[entry.channel] = ReplayedChannel(
            entry.status, entry.reason, entry.load, entry.capacity, entry.wrap_up_until
        )
    return result
