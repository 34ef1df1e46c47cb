"""outbox fencing and ordering: claim token and claimer, ordering key and sequence, supersede key

Revision ID: 0005_outbox_fencing
Revises: 0004_inbox_payload
Create Date: 2026-11-22 17:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_outbox_fencing"
down_revision: str | None = "0004_inbox_payload"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_sequences",
        sa.Column("ordering_key", sa.String(length=200), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("ordering_key", name=op.f("pk_outbox_sequences")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("ordering_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("ordering_seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("supersede_key", sa.String(length=250), nullable=True))
        batch_op.drop_constraint("status", type_="check")
        batch_op.alter_column(
            "status",
            existing_type=sa.String(length=8),
            type_=sa.String(length=16),
            existing_nullable=False,
        )
        batch_op.create_check_constraint(
            "status", "status IN ('pending', 'sent', 'dead', 'superseded')"
        )
        # Status in the middle: the claim asks for an earlier *pending* row of the same key,
        # which must not walk the key's whole sent history.
        batch_op.create_index(
            "ix_outbox_ordering_key_status_ordering_seq",
            ["ordering_key", "status", "ordering_seq"],
            unique=False,
        )
        batch_op.create_index("ix_outbox_supersede_key", ["supersede_key"], unique=False)
    # Mirrors still unsent from before this revision join their agent's order (ahead of every
    # new one, at sequence 0) and can be superseded, so an old state cannot land after a newer.
    key = "'agent:' || m.agent_id || '>' || outbox.target_kind || ':' || outbox.target"
    op.execute(
        f"""
        UPDATE outbox SET
            ordering_key = (SELECT {key} FROM agent_mirrors m WHERE m.id = outbox.id),
            ordering_seq = 0,
            supersede_key = (
                SELECT {key} || '/agent.state/' || m.channel
                FROM agent_mirrors m WHERE m.id = outbox.id
            )
        WHERE status = 'pending' AND type = 'agent.state'
          AND EXISTS (SELECT 1 FROM agent_mirrors m WHERE m.id = outbox.id)
        """
    )


def downgrade() -> None:
    # A superseded row was never sent and never will be: as 'dead' it keeps its last_error.
    op.execute("UPDATE outbox SET status = 'dead' WHERE status = 'superseded'")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_supersede_key")
        batch_op.drop_index("ix_outbox_ordering_key_status_ordering_seq")
        batch_op.drop_constraint("status", type_="check")
        batch_op.alter_column(
            "status",
            existing_type=sa.String(length=16),
            type_=sa.String(length=8),
            existing_nullable=False,
        )
        batch_op.create_check_constraint("status", "status IN ('pending', 'sent', 'dead')")
        batch_op.drop_column("supersede_key")
        batch_op.drop_column("ordering_seq")
        batch_op.drop_column("ordering_key")
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("claim_token")
    op.drop_table("outbox_sequences")
