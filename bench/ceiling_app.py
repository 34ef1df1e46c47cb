"""The ceiling: the least an HTTP service can do with an ``interaction.created`` on this machine.

A minimal FastAPI app that validates the same envelope and data as Harmony's generic CRM
adapter (docs/protocol.md) with pydantic and inserts one row with asyncpg, served like Harmony:
uvicorn, one worker, uvloop and httptools. It checks no signature and keeps no inbox, outbox or
history: it is what Harmony's ingest is measured against, not an alternative to it.

    python bench/ceiling_app.py --dsn postgresql://postgres@127.0.0.1:5432/DB --port 8199

``harmony bench`` starts it on the benchmark's own database (table ``ceiling_interactions``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

TABLE = """
CREATE TABLE IF NOT EXISTS ceiling_interactions (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL,
    external_id text NOT NULL,
    channel text NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL,
    skills jsonb NOT NULL,
    customer jsonb NOT NULL,
    subject text,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT = """
INSERT INTO ceiling_interactions
    (event_id, external_id, channel, queue, priority, skills, customer, subject, occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id
"""


class Created(BaseModel):
    """``data`` of ``interaction.created``, with the protocol's bounds."""

    model_config = ConfigDict(extra="ignore")

    external_id: str = Field(min_length=1, max_length=200)
    channel: Literal["chat", "email"]
    queue: str = Field(min_length=1, max_length=100)
    priority: int = Field(default=0, ge=0, le=100)
    skills: list[str] = Field(default_factory=list)
    customer: dict[str, Any] = Field(default_factory=dict)
    subject: str | None = Field(default=None, max_length=1000)


class Envelope(BaseModel):
    """The event envelope."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^[!-.0-~]{1,128}$")
    type: Literal["interaction.created"]
    occurred_at: AwareDatetime
    data: Created


def create_app(dsn: str) -> FastAPI:
    """The app, with an asyncpg pool of 10 opened at start."""
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
        async with pool.acquire() as conn:
            await conn.execute(TABLE)
        state["pool"] = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/crm/{adapter}/events", status_code=202)
    async def events(adapter: str, request: Request) -> Any:
        try:
            event = Envelope.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse(
                {"error": "validation_error", "detail": str(exc.errors()[0]["msg"])},
                status_code=422,
            )
        data = event.data
        row_id = await state["pool"].fetchval(
            INSERT,
            event.id,
            data.external_id,
            data.channel,
            data.queue,
            data.priority,
            json.dumps(data.skills),
            json.dumps(data.customer),
            data.subject,
            event.occurred_at,
        )
        return {"status": "accepted", "interaction_id": str(row_id)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="postgresql:// DSN of the database to use")
    parser.add_argument("--port", type=int, default=8199)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.dsn),
        host="127.0.0.1",
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
