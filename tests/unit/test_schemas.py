"""The agent reads write plain values (``fields_of``) straight to JSON, skipping their response
models: what they write must be byte for byte what the models would write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pydantic_core
from hypothesis import given
from hypothesis import strategies as st

from harmony.api.schemas import AgentHistoryPage, AgentOut, AgentPage
from harmony.routing.agent_state import AgentStateEntry, Presence, StateOutcome, presence
from harmony.routing.model import Agent, Channel, ChannelState, ChannelStatus
from harmony.routing.ports import Page

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
times = st.one_of(
    st.none(),
    st.integers(-7200, 7200).map(lambda s: NOW + timedelta(seconds=s, microseconds=s % 7)),
)
texts = st.text(min_size=1, max_size=12)


@st.composite
def channel_states(draw: st.DrawFn, channel: Channel) -> ChannelState:
    capacity = draw(st.integers(0, 20))
    return ChannelState(
        channel=channel,
        capacity=capacity,
        load=draw(st.integers(0, capacity + 2)),  # beyond capacity: a call reported anyway
        status=draw(st.sampled_from(ChannelStatus)),
        reason=draw(st.one_of(st.none(), texts)),
        since=draw(times),
        source_at=draw(times),
        wrap_up_until=draw(times),
    )


@st.composite
def agents(draw: st.DrawFn) -> Agent:
    chosen = draw(st.lists(st.sampled_from(Channel), unique=True))
    return Agent(
        id=draw(texts),
        name=draw(st.text(max_size=12)),
        crm_agent_id=draw(texts),
        acd_agent_id=draw(texts),
        skills=draw(st.lists(texts, max_size=3)),
        channels={channel: draw(channel_states(channel)) for channel in chosen},
        profile=draw(texts),
        crm_adapter=draw(texts),
        login_failures=draw(st.integers(0, 5)),
    )


entries = st.builds(
    AgentStateEntry,
    agent_id=texts,
    at=times.filter(lambda t: t is not None),
    channel=st.one_of(st.none(), st.sampled_from(Channel)),
    source=texts,
    event=texts,
    outcome=st.sampled_from(StateOutcome),
    status=st.one_of(st.none(), st.sampled_from(ChannelStatus)),
    reason=st.one_of(st.none(), texts),
    load=st.one_of(st.none(), st.integers(0, 5)),
    capacity=st.one_of(st.none(), st.integers(0, 5)),
    wrap_up_until=times,
    source_at=times,
    sequence=st.one_of(st.none(), st.integers(0, 2**40)),
    detail=st.dictionaries(texts, st.one_of(st.integers(), texts, st.none()), max_size=3),
)
cursors = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True))


@given(st.lists(agents(), max_size=4), cursors)
def test_a_page_of_agents_is_written_as_its_model_writes_it(
    items: list[Agent], cursor: str | None
) -> None:
    fields = AgentPage.fields_of(Page(items, cursor), NOW)
    assert (
        pydantic_core.to_json(fields).decode() == AgentPage.model_validate(fields).model_dump_json()
    )


@given(agents())
def test_one_agent_is_written_as_its_model_writes_it(agent: Agent) -> None:
    fields = AgentOut.fields_of(agent, NOW)
    assert (
        pydantic_core.to_json(fields).decode() == AgentOut.model_validate(fields).model_dump_json()
    )
    assert AgentOut.of(agent, NOW).model_dump_json() == pydantic_core.to_json(fields).decode()


@given(st.lists(entries, max_size=4), cursors)
def test_a_page_of_history_is_written_as_its_model_writes_it(
    items: list[AgentStateEntry], cursor: str | None
) -> None:
    fields = AgentHistoryPage.fields_of(Page(items, cursor))
    written = pydantic_core.to_json(fields).decode()
    assert written == AgentHistoryPage.model_validate(fields).model_dump_json()


def presence_as_specified(states: list[ChannelState], now: datetime) -> Presence:
    """The rule, one clause per line: busy beats wrap-up beats ready beats not ready; logged
    out only when every channel is, holding nothing."""
    if all(s.status == ChannelStatus.LOGGED_OUT and s.load == 0 for s in states):
        return Presence.LOGGED_OUT
    if any(s.load > 0 for s in states):
        return Presence.BUSY
    if any(s.wrap_up_until is not None and s.wrap_up_until > now for s in states):
        return Presence.WRAP_UP
    if any(s.status == ChannelStatus.READY for s in states):
        return Presence.READY
    return Presence.NOT_READY


@given(st.lists(st.sampled_from(list(Channel)).flatmap(channel_states), max_size=3))
def test_presence_in_one_pass_follows_the_rule(states: list[ChannelState]) -> None:
    assert presence(states, NOW) == presence_as_specified(states, NOW)
