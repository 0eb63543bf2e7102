"""Tally's cases, counted signatures, counters, stored offsets and the outbox."""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


_TABLES = """
        -- The registry of cases: every change bumps version and is published through the outbox.
        CREATE TABLE tally.cases (
            id text PRIMARY KEY,
            title jsonb NOT NULL,
            status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'won', 'closed')),
            goal integer NOT NULL CHECK (goal > 0),
            milestones integer[] NOT NULL DEFAULT '{}',
            actions text[] NOT NULL,
            locales text[] NOT NULL,
            default_locale text NOT NULL,
            target text,
            victory jsonb,
            version integer NOT NULL DEFAULT 1,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        -- One row per supporter, case and action: the primary key is the dedupe key, so a
        -- replayed or repeated signature is never counted twice.  No foreign key to cases:
        -- a signature intake acknowledged is kept and counted even if tally does not know
        -- its case (yet), see docs/adr (tally).
        CREATE TABLE tally.signatures (
            case_id text NOT NULL,
            supporter_key text NOT NULL,
            action text NOT NULL,
            signature_id uuid NOT NULL,
            country text NOT NULL,
            locale text NOT NULL,
            received_at timestamptz NOT NULL,
            counted_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (case_id, supporter_key, action)
        );

        -- Counters in one table: dimension 'total' (key ''), 'country' (ISO code) or
        -- 'action'.  A batch adds to each row once, and a case's 'total' row is the lock that
        -- serialises concurrent batches, which makes milestone crossings exact.
        CREATE TABLE tally.counters (
            case_id text NOT NULL,
            dimension text NOT NULL CHECK (dimension IN ('total', 'country', 'action')),
            key text NOT NULL,
            count bigint NOT NULL CHECK (count >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (case_id, dimension, key)
        );

        -- Where each partition resumes, written in the same transaction as the counts.
        CREATE TABLE tally.offsets (
            topic text NOT NULL,
            partition integer NOT NULL,
            next_offset bigint NOT NULL CHECK (next_offset >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, partition)
        );

        -- Events to publish, written in the transaction that caused them.  dedupe_key makes
        -- "milestone:<case>:<threshold>" unique: a milestone fires once.
        CREATE TABLE tally.outbox (
            id bigserial PRIMARY KEY,
            topic text NOT NULL,
            key text NOT NULL,
            payload jsonb NOT NULL,
            dedupe_key text UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            published_at timestamptz
        );
        CREATE INDEX outbox_unpublished ON tally.outbox (topic, id) WHERE published_at IS NULL;
    """


def upgrade() -> None:
    # asyncpg prepares each statement alone: split on the terminator (no ";" in comments).
    for statement in _TABLES.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    for table in ("outbox", "offsets", "counters", "signatures", "cases"):
        op.execute(f"DROP TABLE tally.{table}")
