"""What teams expect (issue 21): the audit trail, notifications and their deliveries, approvals,
and what ran in each step attempt (the image's digest, the bundle's hash).

    audit               append-only: who did what, when, from where (store/audit.py)
    notify_endpoints    where notifications go: URL, events, HMAC secret (store/notify.py)
    notify_deliveries   one row per event and endpoint: the body (masked), its state, its next try
    notify_attempts     every try of a delivery: HTTP status or error, how long it took
    approvals           an approval step's request and its decision (store/approvals.py)
    steps               gains image_digest and bundle_hash (the history of what ran, for --retry-failed)

Follows the cluster's 0004 (it was written beside it, first on top of 0003).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("who", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("detail", sa.Text),
    )
    op.create_index("audit_at", "audit", ["at"])
    op.create_table(
        "notify_endpoints",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("backoff", sa.Float, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
    )
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("claimed_until", sa.Float),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("notify_deliveries_due", "notify_deliveries", ["state", "next_at"])
    op.create_table(
        "notify_attempts",
        sa.Column("delivery_id", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("duration", sa.Float),
        sa.PrimaryKeyConstraint("delivery_id", "attempt"),
    )
    op.create_table(
        "approvals",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("asked", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("decision", sa.Text),
        sa.Column("by", sa.Text),
        sa.Column("comment", sa.Text),
        sa.Column("decided", sa.Float),
        sa.PrimaryKeyConstraint("run_id", "step"),
    )
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("image_digest", sa.Text))
        batch.add_column(sa.Column("bundle_hash", sa.Text))


def downgrade() -> None:
    raise NotImplementedError("sshexec never downgrades a history")
