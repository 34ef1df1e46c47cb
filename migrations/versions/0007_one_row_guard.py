"""one-row guard: a statement that must change exactly one row fails as a whole otherwise

A one-write unit of work sends, in one statement with no transaction around it, a versioned
UPDATE together with the rows it carries (inbox claim, history). Should the version have moved,
the UPDATE changes nothing, but the carried inserts would still be stored; the statement reads
the UPDATE's count through this function, which raises (SQLSTATE HA001) unless it is one, so
the whole statement fails and nothing of it is stored. PostgreSQL only: SQLite runs that unit
of work in a transaction.

Revision ID: 0007_one_row_guard
Revises: 0006_scale
Create Date: 2026-11-23 04:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_one_row_guard"
down_revision: str | None = "0006_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION harmony_one_row_changed(changed bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
        BEGIN
            IF changed IS DISTINCT FROM 1 THEN
                RAISE EXCEPTION 'expected one row changed, not %', changed
                    USING ERRCODE = 'HA001';
            END IF;
            RETURN changed;
        END $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION harmony_one_row_changed(bigint)")
