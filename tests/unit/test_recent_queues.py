"""Queues kept for a moment: served until their time is up, forgotten on change, bounded."""

from __future__ import annotations

from harmony.db.recent import RecentQueues
from harmony.routing.model import Channel, Queue


def test_a_queue_is_served_until_its_time_is_up() -> None:
    now = [10.0]
    recent = RecentQueues(ttl=1.0, monotonic=lambda: now[0])
    recent.keep(Queue("support-chat", Channel.CHAT, ["support"]))

    now[0] = 10.99
    assert recent.get("support-chat") == Queue("support-chat", Channel.CHAT, ["support"])
    now[0] = 11.0
    assert recent.get("support-chat") is None
    assert recent.get("sales-chat") is None


def test_what_is_served_is_a_copy() -> None:
    recent = RecentQueues(ttl=60)
    skills = ["support"]
    recent.keep(Queue("support-chat", Channel.CHAT, skills))
    skills.append("changed by the caller")
    served = recent.get("support-chat")
    assert served is not None
    served.skills.append("changed by another caller")
    assert recent.get("support-chat") == Queue("support-chat", Channel.CHAT, ["support"])


def test_a_forgotten_queue_is_read_again() -> None:
    recent = RecentQueues(ttl=60)
    recent.keep(Queue("support-chat", Channel.CHAT, []))
    recent.forget("support-chat")
    recent.forget("never-kept")
    assert recent.get("support-chat") is None


def test_past_its_limit_the_cache_starts_over() -> None:
    recent = RecentQueues(ttl=60, limit=2)
    for name in ("a", "b", "c"):
        recent.keep(Queue(name, Channel.EMAIL, []))
    assert (recent.get("a"), recent.get("b")) == (None, None)
    assert recent.get("c") == Queue("c", Channel.EMAIL, [])
