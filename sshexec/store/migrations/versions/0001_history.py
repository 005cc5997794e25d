"""The history as sshexec kept it before its database had migrations: runs, steps, artifacts.

A new database gets these tables. A history.db made by an sshexec before
migrations has them already, perhaps in an older form (without the columns
started_by, runbook_hash, retry_of and options; steps keyed without their
attempt): it is brought to this form, as that sshexec did itself.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ADDED_RUN_COLUMNS = ("started_by", "runbook_hash", "retry_of", "options")
STEP_COLUMNS = "run_id, seq, step, worker, status, exit_code, started, finished, message, outputs"


def _steps_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("started", sa.Float),
        sa.Column("finished", sa.Float),
        sa.Column("message", sa.Text),
        sa.Column("outputs", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("carried_from", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "step", "worker", "attempt"),
    )


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("runs"):
        op.create_table(
            "runs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("runbook", sa.Text, nullable=False),
            sa.Column("runbook_path", sa.Text),
            sa.Column("inventory", sa.Text),
            sa.Column("started", sa.Float, nullable=False),
            sa.Column("finished", sa.Float),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("exit_code", sa.Integer),
            sa.Column("message", sa.Text),
            sa.Column("pid", sa.Integer),
            sa.Column("host", sa.Text),
            sa.Column("variables", sa.Text),
            *(sa.Column(name, sa.Text) for name in ADDED_RUN_COLUMNS),
        )
    else:
        have = {c["name"] for c in inspector.get_columns("runs")}
        for name in ADDED_RUN_COLUMNS:
            if name not in have:
                op.add_column("runs", sa.Column(name, sa.Text))
    if not inspector.has_table("steps"):
        _steps_table("steps")
    elif "attempt" not in {c["name"] for c in inspector.get_columns("steps")}:
        # The primary key changes: the table is copied into its new form.
        op.rename_table("steps", "steps_before_attempts")
        _steps_table("steps")
        op.execute(f"INSERT INTO steps ({STEP_COLUMNS}) SELECT {STEP_COLUMNS} FROM steps_before_attempts")
        op.drop_table("steps_before_attempts")
    if not inspector.has_table("artifacts"):
        op.create_table(
            "artifacts",
            sa.Column("run_id", sa.Text, nullable=False),
            sa.Column("step", sa.Text, nullable=False),
            sa.Column("worker", sa.Text, nullable=False),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
        )
    if "runs_started" not in {i["name"] for i in inspector.get_indexes("runs")}:
        op.create_index("runs_started", "runs", ["started"])


def downgrade() -> None:
    raise NotImplementedError("sshexec never downgrades a history")
