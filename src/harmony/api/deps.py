"""What routers get from the application: the wired parts, through one dependency."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

import httpx
from fastapi import Request

from harmony.adapters.base import AdapterRegistry
from harmony.api.admission import Admission
from harmony.config import Settings
from harmony.db.engine import Database
from harmony.outbox.housekeeping import Housekeeper
from harmony.outbox.relay import Relay
from harmony.routing import commands
from harmony.routing.ports import Clock
from harmony.scheduler import Scheduler


@dataclass
class Container:
    """The concrete parts ``main.create_app`` wired for this process."""

    settings: Settings
    db: Database
    clock: Clock
    registry: AdapterRegistry
    relay: Relay
    http: httpx.AsyncClient
    housekeeper: Housekeeper
    admission: Admission
    scheduler: Scheduler

    @cached_property
    def policy(self) -> commands.Policy:
        """The settings the use cases read, built once from ``settings`` (every event needs
        them)."""
        return commands.Policy(
            acd_adapter=self.settings.routing_acd,
            not_ready_reasons=self.settings.not_ready_reasons,
            inbox_retention=timedelta(days=self.settings.inbox_retention_days),
        )


async def container(request: Request) -> Container:
    """FastAPI dependency: the running application's container (async, so FastAPI does not
    hand every request to a worker thread for it)."""
    wired: Container = request.app.state.container
    return wired
