"""Confirmation: encrypted contacts, confirmed subscriptions, invalidations, prioritised deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

``notify.supporters`` held emails and first names in clear (from schema-1
``SignatureAccepted``); it is dropped, not converted: the migration has no key, and
signatures.v1 is retired, so contacts come again from contacts.v1 (sealed with the
``contact-at-rest`` key, outside the database).
"""

from clameur.migrations_env import execute_all

# One statement per op.execute: asyncpg prepares each, and a prepared statement holds one command.

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


UPGRADE = [
    "ALTER TABLE notify.subscriptions DROP CONSTRAINT subscriptions_supporter_key_fkey",
    "DROP TABLE notify.supporters",
    """        -- How to write to a supporter, from contacts.v1.  email and first name are AES-GCM
        -- sealed (nonce || ciphertext) under a key derived from CLAMEUR_SECRET: a dump alone
        -- reveals neither.  recorded_at: the newest contact wins on replay.
        CREATE TABLE notify.contacts (
            supporter_key text PRIMARY KEY,
            email_sealed bytea NOT NULL,
            first_name_sealed bytea NOT NULL,
            locale text NOT NULL,
            recorded_at timestamptz NOT NULL
        )
    """,
    # A subscription is now any (case, supporter) notify may have to write to: one asking
    # for news (wants_updates) or one awaiting confirmation.  News goes only to confirmed ones.
    "ALTER TABLE notify.subscriptions ADD COLUMN wants_updates boolean NOT NULL DEFAULT true",
    "ALTER TABLE notify.subscriptions ADD COLUMN awaits_confirmation boolean NOT NULL DEFAULT false",
    "ALTER TABLE notify.subscriptions ADD COLUMN confirmed_at timestamptz",
    """        -- Supporters tally took out of a case's counts (SupportersInvalidated): no news
        -- of that case until SupportersRestored.
        CREATE TABLE notify.invalidated_supporters (
            case_id text NOT NULL,
            supporter_key text NOT NULL,
            invalidation_id uuid NOT NULL,
            PRIMARY KEY (case_id, supporter_key, invalidation_id)
        )
    """,
    # Confirmation and reminder deliveries have no case event: their event id is derived
    # from (kind, case, supporter), so each is written once.
    "ALTER TABLE notify.deliveries DROP CONSTRAINT deliveries_event_id_fkey",
    "ALTER TABLE notify.deliveries ADD COLUMN case_id text",
    "ALTER TABLE notify.deliveries ADD COLUMN priority smallint NOT NULL DEFAULT 1",
    "DROP INDEX notify.deliveries_due",
    """        -- Claims take priority 0 (confirmations, reminders) before any news (1).
        CREATE INDEX deliveries_due ON notify.deliveries (priority, next_attempt_at)
            WHERE state IN ('pending', 'sending')
    """,
    """        -- Reminders look for sent confirmations still unconfirmed.
        CREATE INDEX deliveries_confirmations_sent ON notify.deliveries (finished_at)
            WHERE kind = 'confirmation' AND state = 'sent'
    """,
]

DOWNGRADE = [
    "DROP INDEX notify.deliveries_confirmations_sent",
    "DROP INDEX notify.deliveries_due",
    "DELETE FROM notify.deliveries WHERE case_id IS NOT NULL",
    """        CREATE INDEX deliveries_due ON notify.deliveries (next_attempt_at)
            WHERE state IN ('pending', 'sending')
    """,
    "ALTER TABLE notify.deliveries DROP COLUMN priority",
    "ALTER TABLE notify.deliveries DROP COLUMN case_id",
    """        ALTER TABLE notify.deliveries ADD CONSTRAINT deliveries_event_id_fkey
            FOREIGN KEY (event_id) REFERENCES notify.case_events
    """,
    "DROP TABLE notify.invalidated_supporters",
    "ALTER TABLE notify.subscriptions DROP COLUMN confirmed_at",
    "ALTER TABLE notify.subscriptions DROP COLUMN awaits_confirmation",
    "ALTER TABLE notify.subscriptions DROP COLUMN wants_updates",
    "DROP TABLE notify.contacts",
    """        CREATE TABLE notify.supporters (
            supporter_key text PRIMARY KEY,
            email text NOT NULL,
            first_name text NOT NULL,
            locale text NOT NULL,
            received_at timestamptz NOT NULL
        )
    """,
    "DELETE FROM notify.subscriptions",
    """        ALTER TABLE notify.subscriptions ADD CONSTRAINT subscriptions_supporter_key_fkey
            FOREIGN KEY (supporter_key) REFERENCES notify.supporters ON DELETE CASCADE
    """,
]


def upgrade() -> None:
    execute_all(UPGRADE)


def downgrade() -> None:
    execute_all(DOWNGRADE)
