"""SQLAlchemy Core tables. The schema itself is created only by the Alembic migrations;
these definitions must match them (a test compares the two)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.types import TypeDecorator

from harmony.routing.model import WAITING_STATES

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on PostgreSQL (timestamptz) and SQLite (text) alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite compares these as text: store one fixed format, without the offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Any:
        # asyncpg takes an aware datetime in any zone for a timestamptz as it is: only the
        # naive check is left, without TypeDecorator's wrapping (a routed interaction binds
        # some thirty of these).
        if dialect.driver == "asyncpg":
            return _aware_only
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # asyncpg returns every timestamptz as an aware datetime in UTC already: no call per
        # value (a page of agents reads over a thousand of them).
        if dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)


def _aware_only(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value


CHANNELS_SQL = "('voice', 'chat', 'email')"
# An interaction waiting for an agent, as SQL: the predicate of the waiting index and of the
# triggers that count waiting interactions per queue (migration 0006 spells the same states).
WAITING_SQL = "state IN (" + ", ".join(f"'{s.value}'" for s in sorted(WAITING_STATES)) + ")"
STATES_SQL = (
    "('received', 'routing', 'queued', 'offered', 'delivered', 'accepted', 'completed', 'failed',"
    " 'abandoned', 'cancelled', 'fallback')"
)
# An agent is named while the interaction holds the agent's capacity and once it was completed
# there, never while it waits; work that ended otherwise may or may not have reached one.
AGENT_MATCHES_STATE_SQL = (
    "(state NOT IN ('offered', 'delivered', 'accepted', 'completed') OR agent_id IS NOT NULL)"
    " AND (state NOT IN ('received', 'routing', 'queued') OR agent_id IS NULL)"
)

queues = Table(
    "queues",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("skills", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The queue's policy; NULL takes the channel's default (routing.model.QUEUE_DEFAULTS).
    Column("offer_timeout_seconds", Integer, nullable=True),
    Column("routing_timeout_seconds", Integer, nullable=True),
    Column("max_wait_seconds", Integer, nullable=True),
    Column("max_offers", Integer, nullable=True),
    # Where work goes when the queue gives up on it: another queue, or (NULL) back to the CRM.
    Column("overflow_queue", String(100), nullable=True),
    CheckConstraint("channel IN ('chat', 'email')", name="channel"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("capacity", JSON, nullable=False),
    Column("wrap_up_seconds", JSON, nullable=False),
    Column("blocks", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # RONA: not ready after this many offers missed in a row (0: never).
    Column("rona_after", Integer, nullable=False, server_default="1"),
    Column("rona_counts_decline", Boolean, nullable=False, server_default=false()),
    # Accepted email goes back to its queue when its agent leaves email (chats stay).
    Column("return_accepted_email", Boolean, nullable=False, server_default=false()),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("crm_adapter", String(64), nullable=False, server_default="generic"),
    Column("crm_agent_id", String(200), nullable=False, unique=True),
    Column("acd_agent_id", String(200), nullable=False, unique=True),
    Column(
        "profile",
        String(100),
        ForeignKey("profiles.name"),
        nullable=False,
        server_default="default",
    ),
    Column("login_failures", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_agents_profile", "profile"),
)

agent_skills = Table(
    "agent_skills",
    metadata,
    Column("agent_id", String(100), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("skill", String(100), nullable=False),
    PrimaryKeyConstraint("agent_id", "skill"),
    Index("ix_agent_skills_skill_agent_id", "skill", "agent_id"),
)

agent_channels = Table(
    "agent_channels",
    metadata,
    Column("agent_id", String(100), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("load", Integer, nullable=False),
    # Work a peer reported beyond capacity (a call the ACD put through anyway): a fact Harmony
    # records, kept out of ``load`` so that ``load <= capacity`` still guards what it offers.
    Column("overflow", Integer, nullable=False, server_default="0"),
    # Set when the agent's own capacity overrides its profile's on this channel.
    Column("capacity_override", Integer, nullable=True),
    Column("status", String(16), nullable=False, server_default="logged_out"),
    Column("reason", String(64), nullable=True),
    Column("since", UtcDateTime, nullable=True),
    Column("source_at", UtcDateTime, nullable=True),
    Column("wrap_up_until", UtcDateTime, nullable=True),
    # A state asked for while the agent held work here: applied when the last work ends.
    Column("next_status", String(16), nullable=True),
    Column("next_reason", String(64), nullable=True),
    PrimaryKeyConstraint("agent_id", "channel"),
    CheckConstraint(f"channel IN {CHANNELS_SQL}", name="channel"),
    CheckConstraint("status IN ('logged_out', 'not_ready', 'ready')", name="status"),
    Index("ix_agent_channels_channel_status", "channel", "status"),
    CheckConstraint("capacity >= 0", name="capacity_not_negative"),
    CheckConstraint("load >= 0", name="load_not_negative"),
    CheckConstraint("load <= capacity", name="load_within_capacity"),
    CheckConstraint("overflow >= 0", name="overflow_not_negative"),
)

interactions = Table(
    "interactions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("crm_adapter", String(64), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("queue", String(100), ForeignKey("queues.name"), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("skills", JSON, nullable=False),
    Column("customer", JSON, nullable=False),
    Column("subject", Text, nullable=True),
    Column("acd_adapter", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("request_id", String(64), nullable=True, unique=True),
    Column("agent_id", String(100), ForeignKey("agents.id"), nullable=True),
    Column("version", Integer, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("routing_at", UtcDateTime, nullable=True),
    Column("queued_at", UtcDateTime, nullable=True),
    Column("offered_at", UtcDateTime, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("accepted_at", UtcDateTime, nullable=True),
    Column("completed_at", UtcDateTime, nullable=True),
    Column("failed_at", UtcDateTime, nullable=True),
    Column("abandoned_at", UtcDateTime, nullable=True),
    Column("cancelled_at", UtcDateTime, nullable=True),
    Column("fallback_at", UtcDateTime, nullable=True),
    # Offers made so far (the queue's max_offers bounds them), moves to an overflow queue, and
    # when the current queue's maximum wait runs out.
    Column("offers_made", Integer, nullable=False, server_default="0"),
    Column("overflows", Integer, nullable=False, server_default="0"),
    Column("max_wait_at", UtcDateTime, nullable=True),
    UniqueConstraint("crm_adapter", "external_id"),
    CheckConstraint("channel IN ('chat', 'email')", name="channel"),
    CheckConstraint(f"state IN {STATES_SQL}", name="state"),
    CheckConstraint("priority BETWEEN 0 AND 100", name="priority_range"),
    CheckConstraint(AGENT_MATCHES_STATE_SQL, name="agent_matches_state"),
    Index("ix_interactions_state_received_at", "state", "received_at"),
    Index("ix_interactions_queue_state", "queue", "state"),
    Index("ix_interactions_received_at_id", "received_at", "id"),
    # The oldest waiting interaction of a queue is this index's first entry for the queue.
    Index(
        "ix_interactions_waiting",
        "queue",
        "received_at",
        postgresql_where=text(WAITING_SQL),
        sqlite_where=text(WAITING_SQL),
    ),
    # GET /v1/queues counts each queue's recent abandons: only abandoned rows enter this index.
    Index(
        "ix_interactions_abandoned",
        "queue",
        "abandoned_at",
        postgresql_where=text("state = 'abandoned'"),
        sqlite_where=text("state = 'abandoned'"),
    ),
)

# How many interactions wait in each queue, kept by triggers on ``interactions`` (migration
# 0006) in the very transaction that moves one into or out of a waiting state, so it always
# equals a count of the rows. Each queue's count is spread over shards (by interaction id; one
# shard on SQLite, which has one writer): transactions of one queue on several connections or
# replicas then rarely wait for each other's row lock, as they would on a single counter row.
queue_waiting = Table(
    "queue_waiting",
    metadata,
    Column("queue", String(100), nullable=False),
    Column("shard", Integer, nullable=False),
    Column("waiting", Integer, nullable=False),
    PrimaryKeyConstraint("queue", "shard"),
)

interaction_history = Table(
    "interaction_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column(
        "interaction_id",
        String(36),
        ForeignKey("interactions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", UtcDateTime, nullable=False),
    Column("event", String(64), nullable=False),
    Column("from_state", String(16), nullable=True),
    Column("to_state", String(16), nullable=True),
    Column("cause", Text, nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_interaction_history_interaction_id_id", "interaction_id", "id"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("source", String(80), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("interaction_id", String(36), nullable=True),
    Column("received_at", UtcDateTime, nullable=False),
    # The body as verified, up to the request body limit; NULL for rows from before 0003.
    Column("payload", Text, nullable=True),
    Column("status", String(8), nullable=False, server_default="applied"),
    Column("handled_at", UtcDateTime, nullable=True),
    Column("error", Text, nullable=True),
    PrimaryKeyConstraint("source", "event_id"),
    CheckConstraint("status IN ('pending', 'applied', 'failed')", name="status"),
    Index("ix_inbox_received_at", "received_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("target_kind", String(8), nullable=False),
    Column("target", String(64), nullable=False),
    Column("type", String(64), nullable=False),
    Column("interaction_id", String(36), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    # Fencing: set by each claim; an outcome is recorded only where the row still carries it.
    Column("claim_token", String(64), nullable=True),
    Column("claimed_by", String(200), nullable=True),
    # Messages sharing an ordering key go out one at a time in ordering_seq order.
    Column("ordering_key", String(200), nullable=True),
    Column("ordering_seq", BigInteger, nullable=True),
    # A newer message with the same supersede key replaces this one while it is unsent.
    Column("supersede_key", String(250), nullable=True),
    CheckConstraint("status IN ('pending', 'sent', 'dead', 'superseded')", name="status"),
    CheckConstraint("target_kind IN ('acd', 'crm')", name="target_kind"),
    Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_outbox_ordering_key_status_ordering_seq", "ordering_key", "status", "ordering_seq"),
    Index("ix_outbox_supersede_key", "supersede_key"),
    # The claim's "an earlier message of this key is still pending" (migration 0006).
    Index(
        "ix_outbox_pending_ordering",
        "ordering_key",
        "ordering_seq",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
)

OFFER_STATUSES_SQL = (
    "('pending', 'accepted', 'declined', 'timed_out', 'rescinded', 'abandoned', 'completed',"
    " 'transferred')"
)
LIVE_OFFER_SQL = "status IN ('pending', 'accepted')"

# Offers of work to agents (routing.model.Offer), like TaskRouter's reservations: every one an
# interaction received, in order. A pending or accepted offer holds a unit of the agent's
# capacity (agent_channels.load counts them, with voice calls).
offers = Table(
    "offers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column(
        "interaction_id",
        String(36),
        ForeignKey("interactions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("agent_id", String(100), ForeignKey("agents.id"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("offered_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime, nullable=True),
    Column("reason", String(200), nullable=True),
    CheckConstraint(f"status IN {OFFER_STATUSES_SQL}", name="status"),
    Index("ix_offers_interaction_id_offered_at", "interaction_id", "offered_at"),
    # At most one offer per interaction is pending or accepted: the database says so.
    Index(
        "uq_offers_live_interaction",
        "interaction_id",
        unique=True,
        postgresql_where=text(LIVE_OFFER_SQL),
        sqlite_where=text(LIVE_OFFER_SQL),
    ),
    # RONA reads the offers an agent most recently answered or missed on a channel.
    Index("ix_offers_agent_id_channel_decided_at", "agent_id", "channel", "decided_at"),
    Index(
        "ix_offers_live_agent",
        "agent_id",
        postgresql_where=text(LIVE_OFFER_SQL),
        sqlite_where=text(LIVE_OFFER_SQL),
    ),
)

# Durable timers (routing.ports.Timer): one per kind and subject, claimed by a scheduler with a
# token that fences its outcome, removed in the transaction of what firing did.
scheduled = Table(
    "scheduled",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("guard", String(200), nullable=False),
    Column("detail", JSON, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("claim_token", String(64), nullable=True),
    Column("claimed_by", String(200), nullable=True),
    Column("claimed_until", UtcDateTime, nullable=True),
    UniqueConstraint("kind", "subject"),
    Index("ix_scheduled_due_at", "due_at"),
)

# The last ordering_seq given out per ordering key; bumped in the transaction that writes the
# message, so a key's sequence follows the order its transactions commit in.
outbox_sequences = Table(
    "outbox_sequences",
    metadata,
    Column("ordering_key", String(200), primary_key=True),
    Column("sequence", BigInteger, nullable=False),
)

agent_state_history = Table(
    "agent_state_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("agent_id", String(100), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("channel", String(16), nullable=True),
    Column("source", String(80), nullable=False),
    Column("source_at", UtcDateTime, nullable=True),
    Column("sequence", BigInteger, nullable=True),
    Column("event", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status", String(16), nullable=True),
    Column("reason", String(64), nullable=True),
    Column("load", Integer, nullable=True),
    Column("capacity", Integer, nullable=True),
    Column("wrap_up_until", UtcDateTime, nullable=True),
    Column("detail", JSON, nullable=False),
    CheckConstraint("outcome IN ('applied', 'unchanged', 'ignored_stale', 'echo')", name="outcome"),
    Index("ix_agent_state_history_agent_id_id", "agent_id", "id"),
)

# Latest sequence number seen per agent and source, for sources that number their events.
agent_sequences = Table(
    "agent_sequences",
    metadata,
    Column("agent_id", String(100), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(80), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    PrimaryKeyConstraint("agent_id", "source"),
)

# State changes Harmony mirrored to a CRM or ACD, to recognise their echo coming back.
agent_mirrors = Table(
    "agent_mirrors",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("agent_id", String(100), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("target_kind", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("sent_at", UtcDateTime, nullable=False),
    Column("echoed_at", UtcDateTime, nullable=True),
    Index("ix_agent_mirrors_agent_id_channel_target_kind", "agent_id", "channel", "target_kind"),
)

voice_calls = Table(
    "voice_calls",
    metadata,
    Column("acd_adapter", String(64), nullable=False),
    Column("call_id", String(128), nullable=False),
    Column("agent_id", String(100), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("ended_at", UtcDateTime, nullable=True),
    PrimaryKeyConstraint("acd_adapter", "call_id"),
)
