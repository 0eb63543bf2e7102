"""Confirmation: pending signatures, confirmed supporters, what invalidations filter on."""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


_CHANGES = """
        -- A signature awaiting its supporter's confirmation is stored 'pending' (not in the
        -- counters), 'counted' every other row, so rows stored before confirmation
        -- existed stay counted.  The source fields are what invalidations filter on (never
        -- the address).  Adding columns with constant defaults rewrites nothing.
        ALTER TABLE tally.signatures
            ADD COLUMN state text NOT NULL DEFAULT 'counted' CHECK (state IN ('pending', 'counted')),
            ADD COLUMN email_domain text,
            ADD COLUMN widget text,
            ADD COLUMN page_url text,
            ADD COLUMN partner text;

        -- Only pending rows are indexed: the expiry job finds them without costing the
        -- counted rows (almost all of them) an index entry.
        CREATE INDEX signatures_pending_received ON tally.signatures (received_at) WHERE state = 'pending';

        -- (case, supporter) confirmed: their later signatures of the case count at once.
        CREATE TABLE tally.confirmed_supporters (
            case_id text NOT NULL,
            supporter_key text NOT NULL,
            confirmed_at timestamptz NOT NULL,
            PRIMARY KEY (case_id, supporter_key)
        );

        -- A case's pending signatures are one more counter, moved in the same transactions.
        ALTER TABLE tally.counters DROP CONSTRAINT counters_dimension_check;
        ALTER TABLE tally.counters ADD CONSTRAINT counters_dimension_check
            CHECK (dimension IN ('total', 'country', 'action', 'pending'));

        -- Cases stored before confirmation existed counted at once: 'none'.
        ALTER TABLE tally.cases
            ADD COLUMN confirmation text NOT NULL DEFAULT 'none' CHECK (confirmation IN ('email', 'none')),
            ADD COLUMN small_count_threshold integer NOT NULL DEFAULT 5 CHECK (small_count_threshold >= 0),
            ADD COLUMN retention_days integer NOT NULL DEFAULT 180 CHECK (retention_days > 0)
    """


def upgrade() -> None:
    # asyncpg prepares each statement alone: split on the terminator (no ";" in comments).
    for statement in _CHANGES.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute(
        "ALTER TABLE tally.cases DROP COLUMN confirmation, DROP COLUMN small_count_threshold, "
        "DROP COLUMN retention_days"
    )
    op.execute("DELETE FROM tally.counters WHERE dimension = 'pending'")
    op.execute("ALTER TABLE tally.counters DROP CONSTRAINT counters_dimension_check")
    op.execute(
        "ALTER TABLE tally.counters ADD CONSTRAINT counters_dimension_check "
        "CHECK (dimension IN ('total', 'country', 'action'))"
    )
    op.execute("DROP TABLE tally.confirmed_supporters")
    op.execute("DELETE FROM tally.signatures WHERE state = 'pending'")
    op.execute(
        "ALTER TABLE tally.signatures DROP COLUMN state, DROP COLUMN email_domain, DROP COLUMN widget, "
        "DROP COLUMN page_url, DROP COLUMN partner"
    )
