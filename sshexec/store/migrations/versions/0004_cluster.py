"""The cluster: the run queue, server nodes, schedules and their ticks, leases and settings; runs gains
the node that claimed it and the claim's epoch (store/cluster_schema.py, store/cluster.py).

Nothing is copied: a history of before has no queued run, node or schedule.
Its runs keep NULL in `node` and `epoch`: they were command-line runs.

On PostgreSQL 14 and later, the log's and artifacts' chunks are compressed with
lz4 instead of pglz (new rows; old ones stay as they are): a node streaming a
million lines spends far less of the server's CPU on them, for about the same
space. A server built without lz4 keeps pglz.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    if "node" not in have:
        op.add_column("runs", sa.Column("node", sa.Text))
    if "epoch" not in have:
        op.add_column("runs", sa.Column("epoch", sa.Integer))
    op.create_index("runs_node_status", "runs", ["node", "status"])
    op.create_table(
        "queue",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text, nullable=False, unique=True),
        sa.Column("runbook", sa.Text, nullable=False),
        sa.Column("variables", sa.Text),
        sa.Column("submitted", sa.Float, nullable=False),
        sa.Column("submitted_by", sa.Text),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("node", sa.Text),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed", sa.Float),
        sa.Column("retry_of", sa.Text),
    )
    op.create_index("queue_state_seq", "queue", ["state", "seq"])
    op.create_table(
        "nodes",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("host", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("url", sa.Text),
        sa.Column("task_cap", sa.Integer, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("draining", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("version", sa.Text),
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("runbook", sa.Text, nullable=False),
        sa.Column("variables", sa.Text),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("created_by", sa.Text),
        sa.Column("last_tick", sa.Float),
    )
    op.create_table(
        "schedule_ticks",
        sa.Column("schedule", sa.Text, nullable=False),
        sa.Column("tick", sa.Float, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("node", sa.Text),
        sa.Column("fired", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("schedule", "tick"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("since", sa.Float, nullable=False),
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and bind.dialect.server_version_info >= (14,):
        lz4 = bind.execute(sa.text("SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)")).scalar()
        if lz4:
            op.execute("ALTER TABLE log_chunks ALTER COLUMN data SET COMPRESSION lz4")
            op.execute("ALTER TABLE artifact_chunks ALTER COLUMN data SET COMPRESSION lz4")


def downgrade() -> None:
    raise NotImplementedError("sshexec never downgrades a history")
