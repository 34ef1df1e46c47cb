"""The seed file: queues and agents to provision in Harmony and mirror in the ACD simulator.

One JSON file describes a contact center (channel profiles, queues, agents); ``harmony serve
--seed`` upserts it into Harmony and ``harmony sim-acd --seed`` gives the simulated ACD the same
agents, so both sides agree.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

CHANNELS = ("voice", "chat", "email")
# Harmony's built-in "default" profile (migration 0002), for agents whose seed names no other.
DEFAULT_CAPACITY = {"voice": 1, "chat": 3, "email": 2}


class SeedQueue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    channel: str = Field(pattern="^(chat|email)$")
    skills: list[str] = Field(default_factory=list)
    offer_timeout_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    routing_timeout_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    max_wait_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    max_offers: int | None = Field(default=None, ge=1, le=100)
    overflow_queue: str | None = Field(default=None, min_length=1, max_length=100)


class SeedProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    capacity: dict[str, int] = Field(default_factory=dict)
    wrap_up_seconds: dict[str, int] = Field(default_factory=dict)
    blocks: dict[str, list[str]] = Field(default_factory=dict)
    rona_after: int = Field(default=1, ge=0, le=100)
    rona_counts_decline: bool = False
    return_accepted_email: bool = False


class SeedAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    name: str = Field(default="", max_length=200)
    crm_agent_id: str = Field(min_length=1, max_length=200)
    acd_agent_id: str = Field(min_length=1, max_length=200)
    # The agent's CRM adapter; default: the only one configured, else "generic".
    crm_adapter: str | None = Field(default=None, max_length=64)
    skills: list[str] = Field(default_factory=list)
    profile: str = "default"
    capacity: dict[str, int] = Field(default_factory=dict)


class Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profiles: list[SeedProfile] = Field(default_factory=list)
    queues: list[SeedQueue] = Field(default_factory=list)
    agents: list[SeedAgent] = Field(default_factory=list)

    def profile_of(self, agent: SeedAgent) -> SeedProfile | None:
        """The agent's profile as the seed defines it (None for Harmony's built-in default)."""
        return next((p for p in self.profiles if p.name == agent.profile), None)

    def capacity_of(self, agent: SeedAgent) -> dict[str, int]:
        """Effective capacity per channel: the agent's own where given, else its profile's."""
        profile = self.profile_of(agent)
        base = dict(profile.capacity) if profile else dict(DEFAULT_CAPACITY)
        return {**base, **agent.capacity}


def load_seed(path: str | Path) -> Seed:
    """Read and validate a seed file; raises ValueError naming the problem."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read seed file {path}: {exc}") from exc
    return Seed.model_validate(raw)
