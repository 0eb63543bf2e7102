"""Invalidations: signatures taken back out of the counts, each with its reason and author."""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


_STATEMENTS = """
        -- The invalidation that holds a row out of the counts (NULL: it counts).  A row
        -- belongs to one invalidation at a time: the first that took it.
        ALTER TABLE tally.signatures ADD COLUMN invalidation_id uuid;
        CREATE INDEX signatures_invalidated ON tally.signatures (case_id, invalidation_id)
            WHERE invalidation_id IS NOT NULL;

        -- One row per applied InvalidationRequested, written in the batch transaction that
        -- applied it.  applied_seq orders a case's invalidations as the log did (one
        -- partition per case): a revoked one hands its rows to the next matching one.
        CREATE TABLE tally.invalidations (
            id uuid PRIMARY KEY,
            applied_seq bigint GENERATED ALWAYS AS IDENTITY,
            case_id text NOT NULL,
            reason text NOT NULL,
            filter jsonb NOT NULL,
            requested_by text NOT NULL,
            requested_at timestamptz NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            matched bigint NOT NULL,
            by_country jsonb NOT NULL,
            by_action jsonb NOT NULL,
            revoked_at timestamptz,
            revoked_by text,
            restored bigint,
            restored_by_country jsonb,
            restored_by_action jsonb
        );
        CREATE INDEX invalidations_of_case ON tally.invalidations (case_id, applied_seq)
    """


def upgrade() -> None:
    # asyncpg prepares each statement alone: split on the terminator (no ";" in comments).
    for statement in _STATEMENTS.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE tally.invalidations")
    op.execute("DROP INDEX tally.signatures_invalidated")
    op.execute("ALTER TABLE tally.signatures DROP COLUMN invalidation_id")
