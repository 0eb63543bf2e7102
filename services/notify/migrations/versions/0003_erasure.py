"""Suppressions (from suppressions.v1), the cases' retention clocks (from cases.v1), and
each contact's address hash (the send-time suppression check).
"""

from clameur.migrations_env import execute_all

# One statement per op.execute: asyncpg prepares each, and a prepared statement holds one command.

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


UPGRADE = [
    """        -- Addresses never to mail again, as keyed hashes (no address): a copy of the
        -- compacted suppressions.v1, so a rebuilt notify knows them.  case_id '' = every case.
        CREATE TABLE notify.suppressions (
            address_hash text NOT NULL,
            case_id text NOT NULL,
            reason text NOT NULL CHECK (reason IN ('unsubscribed', 'rejected', 'erased')),
            suppressed_at timestamptz NOT NULL,
            PRIMARY KEY (address_hash, case_id)
        )
    """,
    """        -- When each case stopped (won or closed) and how long its supporters' personal
        -- data is kept after that (CaseState.retention_days), from cases.v1.
        CREATE TABLE notify.case_retention (
            case_id text PRIMARY KEY,
            version integer NOT NULL,
            status text NOT NULL,
            retention_days integer NOT NULL,
            ended_at timestamptz
        )
    """,
    # The keyed hash of the contact's address (notify.suppressions' key), written with the
    # sealed contact: the claim checks suppressions without opening any address.  NULL only
    # for a contact stored before this migration, until contacts.v1 delivers it again.
    "ALTER TABLE notify.contacts ADD COLUMN address_hash text",
    "CREATE INDEX contacts_address_hash ON notify.contacts (address_hash)",
]

DOWNGRADE = [
    "DROP INDEX notify.contacts_address_hash",
    "ALTER TABLE notify.contacts DROP COLUMN address_hash",
    "DROP TABLE notify.case_retention",
    "DROP TABLE notify.suppressions",
]


def upgrade() -> None:
    execute_all(UPGRADE)


def downgrade() -> None:
    execute_all(DOWNGRADE)
