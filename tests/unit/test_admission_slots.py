"""Admission's slots on their own: what an event takes it gives back, refused or not."""

from __future__ import annotations

import contextlib

import pytest

from harmony.api.admission import Admission, Overloaded
from harmony.routing.commands import CompleteInteraction, CreateInteraction
from harmony.routing.model import Channel


def create(n: int) -> CreateInteraction:
    return CreateInteraction(
        crm_adapter="generic",
        event_id=f"e-{n}",
        external_id=f"x-{n}",
        channel=Channel.CHAT,
        queue="support-chat",
    )


def complete(n: int) -> CompleteInteraction:
    return CompleteInteraction(crm_adapter="generic", event_id=f"c-{n}", external_id=f"x-{n}")


def admission() -> Admission:
    # Four slots, of which new interactions may hold three; no waiting, no lag check.
    return Admission(max_inflight=4, wait_seconds=0, retry_after_seconds=1, max_lag_seconds=0)


async def test_a_new_interaction_refused_for_the_last_slot_gives_its_new_work_slot_back() -> None:
    slots = admission()
    async with contextlib.AsyncExitStack() as finishing:
        for n in range(4):
            await finishing.enter_async_context(slots.slot(complete(n)))
        assert slots.in_flight == 4
        for n in range(5):  # each takes a new-work slot, then finds no slot at all
            with pytest.raises(Overloaded):
                async with slots.slot(create(n)):
                    pass
    assert slots.in_flight == 0
    assert slots.refused == {"busy": 5, "lag": 0}
    async with contextlib.AsyncExitStack() as new_work:
        for n in range(3):  # all three new-work slots are free again
            await new_work.enter_async_context(slots.slot(create(10 + n)))
        assert slots.in_flight == 3
        with pytest.raises(Overloaded):  # the fourth slot is kept for finishing events
            async with slots.slot(create(20)):
                pass
        async with slots.slot(complete(20)):
            assert slots.in_flight == 4


async def test_a_slot_is_given_back_when_the_event_fails() -> None:
    slots = admission()
    for n in range(10):
        with pytest.raises(RuntimeError):
            async with slots.slot(create(n)):
                raise RuntimeError("the use case failed")
    assert slots.in_flight == 0
    async with contextlib.AsyncExitStack() as held:
        for n in range(4):
            await held.enter_async_context(slots.slot(complete(n)))
        assert slots.in_flight == 4
