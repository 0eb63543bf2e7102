"""Notify's supporter list, unsubscriptions, erasures, case events and the delivery ledger."""

from clameur.migrations_env import execute_all

# One statement per op.execute: asyncpg prepares each, and a prepared statement holds one command.

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


UPGRADE = [
    """        -- Supporters who consented to updates: the only place notify keeps an email.
        -- received_at is the newest signature that wrote the row (latest wins on replay).
        CREATE TABLE notify.supporters (
            supporter_key text PRIMARY KEY,
            email text NOT NULL,
            first_name text NOT NULL,
            locale text NOT NULL,
            received_at timestamptz NOT NULL
        )
    """,
    """        -- Which cases a supporter asked news about, and when they first signed it.
        CREATE TABLE notify.subscriptions (
            case_id text NOT NULL,
            supporter_key text NOT NULL REFERENCES notify.supporters ON DELETE CASCADE,
            signed_at timestamptz NOT NULL,
            PRIMARY KEY (case_id, supporter_key)
        )
    """,
    """        -- case_id '' means "from everything".
        CREATE TABLE notify.unsubscriptions (
            supporter_key text NOT NULL,
            case_id text NOT NULL DEFAULT '',
            unsubscribed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (supporter_key, case_id)
        )
    """,
    """        -- Tombstones: signatures received before erased_at never re-create the supporter.
        CREATE TABLE notify.erasures (
            supporter_key text PRIMARY KEY,
            erased_at timestamptz NOT NULL DEFAULT now()
        )
    """,
    """        CREATE TABLE notify.consumer_offsets (
            group_id text NOT NULL,
            topic text NOT NULL,
            partition integer NOT NULL,
            next_offset bigint NOT NULL,
            PRIMARY KEY (group_id, topic, partition)
        )
    """,
    """        -- Milestones and victories as received, so sending needs no Kafka.  fanned_out_at
        -- is set once the delivery rows exist.
        CREATE TABLE notify.case_events (
            event_id uuid PRIMARY KEY,
            case_id text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('milestone', 'victory')),
            occurred_at timestamptz NOT NULL,
            event jsonb NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            fanned_out_at timestamptz
        )
    """,
    """        CREATE INDEX case_events_to_fan_out ON notify.case_events (recorded_at)
            WHERE fanned_out_at IS NULL
    """,
    """        -- The ledger: one row per (event, supporter), written before sending.
        -- pending -> sending (claimed, next_attempt_at = lease end) -> sent | failed | cancelled.
        CREATE TABLE notify.deliveries (
            id bigserial PRIMARY KEY,
            event_id uuid NOT NULL REFERENCES notify.case_events,
            supporter_key text NOT NULL,
            kind text NOT NULL,
            state text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            UNIQUE (event_id, supporter_key)
        )
    """,
    """        CREATE INDEX deliveries_due ON notify.deliveries (next_attempt_at)
            WHERE state IN ('pending', 'sending')
    """,
    """        CREATE INDEX deliveries_by_supporter ON notify.deliveries (supporter_key)
    """,
]

DOWNGRADE = [
    "DROP TABLE notify.deliveries",
    "DROP TABLE notify.case_events",
    "DROP TABLE notify.consumer_offsets",
    "DROP TABLE notify.erasures",
    "DROP TABLE notify.unsubscriptions",
    "DROP TABLE notify.subscriptions",
    "DROP TABLE notify.supporters",
]


def upgrade() -> None:
    execute_all(UPGRADE)


def downgrade() -> None:
    execute_all(DOWNGRADE)
