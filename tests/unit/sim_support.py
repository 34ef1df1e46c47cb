"""Helpers shared by the ACD and CRM simulator tests: a recording fake Harmony and polling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from harmony.adapters.generic_http.protocol import envelope, post_event
from harmony.adapters.generic_http.signing import SignatureError, Signer, new_secret

SECRET = new_secret()
HARMONY = "http://harmony.test"


class RecordingHarmony:
    """One of Harmony's adapter endpoints: checks each event's signature and records it.

    Subclasses script the reply by overriding ``answer``; the default is a plain 202.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.signer = Signer(SECRET)
        self.messages: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """The ``httpx.MockTransport`` handler standing in for Harmony."""
        try:
            self.signer.verify(request.content, dict(request.headers))
        except SignatureError as exc:
            self.bad_signatures += 1
            return httpx.Response(401, json={"error": "invalid_signature", "detail": str(exc)})
        assert request.url.path == self.path
        message = json.loads(request.content)
        assert message["id"] == request.headers["webhook-id"]
        self.messages.append(message)
        return await self.answer(message)

    async def answer(self, message: dict[str, Any]) -> httpx.Response:
        """Harmony's reply to a message that was signed correctly and recorded."""
        return httpx.Response(202, json={"status": "accepted"})

    def data(self, event_type: str) -> list[dict[str, Any]]:
        """The ``data`` of every message of ``event_type``, in arrival order."""
        return [m["data"] for m in self.messages if m["type"] == event_type]


@asynccontextmanager
async def serving(app: FastAPI, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client that calls it in process."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client,
    ):
        yield client


async def send(
    client: httpx.AsyncClient,
    event_type: str,
    data: dict[str, Any],
    secret: str = SECRET,
    event_id: str | None = None,
) -> httpx.Response:
    """Post one signed event to the simulator's ``/events``, as Harmony would."""
    return await post_event(
        client, "/events", Signer(secret), envelope(event_type, data, event_id=event_id)
    )


async def state(client: httpx.AsyncClient) -> dict[str, Any]:
    """The simulator's ``GET /state``."""
    response = await client.get("/state")
    assert response.status_code == 200
    current: dict[str, Any] = response.json()
    return current


async def wait_until(
    client: httpx.AsyncClient, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll /state until ``predicate`` holds; fail after a bounded number of tries."""
    for _ in range(500):
        current = await state(client)
        if predicate(current):
            return current
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition never held; last state: {current}")
