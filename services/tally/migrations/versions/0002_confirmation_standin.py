"""STAND-IN for tally-a's 0002 (drop at merge): a signature's state and the filter fields.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE tally.signatures ADD COLUMN state text NOT NULL DEFAULT 'counted' "
        "CHECK (state IN ('pending','counted'))"
    )
    for column in ("email_domain", "widget", "page_url", "partner"):
        op.execute(f"ALTER TABLE tally.signatures ADD COLUMN {column} text")


def downgrade() -> None:
    for column in ("partner", "page_url", "widget", "email_domain", "state"):
        op.execute(f"ALTER TABLE tally.signatures DROP COLUMN {column}")
