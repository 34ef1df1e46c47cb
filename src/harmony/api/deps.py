"""What routers get from the application: the wired parts, through one dependency."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from fastapi import Request

from harmony.adapters.base import AdapterRegistry
from harmony.config import Settings
from harmony.db.engine import Database
from harmony.outbox.relay import Relay
from harmony.routing.ports import Clock


@dataclass
class Container:
    """The concrete parts ``main.create_app`` wired for this process."""

    settings: Settings
    db: Database
    clock: Clock
    registry: AdapterRegistry
    relay: Relay
    http: httpx.AsyncClient


def container(request: Request) -> Container:
    """FastAPI dependency: the running application's container."""
    wired: Container = request.app.state.container
    return wired
