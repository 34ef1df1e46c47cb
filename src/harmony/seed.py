"""The seed file: queues and agents to provision in Harmony and mirror in the ACD simulator.

One JSON file describes a contact center; ``harmony serve --seed`` upserts it into Harmony and
``harmony sim-acd --seed`` gives the simulated ACD the same agents, so both sides agree.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

CHANNELS = ("voice", "chat", "email")


class SeedQueue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    channel: str = Field(pattern="^(chat|email)$")
    skills: list[str] = Field(default_factory=list)


class SeedAgent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    name: str = Field(default="", max_length=200)
    crm_agent_id: str = Field(min_length=1, max_length=200)
    acd_agent_id: str = Field(min_length=1, max_length=200)
    skills: list[str] = Field(default_factory=list)
    capacity: dict[str, int] = Field(default_factory=dict)


class Seed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queues: list[SeedQueue] = Field(default_factory=list)
    agents: list[SeedAgent] = Field(default_factory=list)


def load_seed(path: str | Path) -> Seed:
    """Read and validate a seed file; raises ValueError naming the problem."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read seed file {path}: {exc}") from exc
    return Seed.model_validate(raw)
