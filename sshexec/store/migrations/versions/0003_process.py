"""Which process a run is, and who asked it to stop: runs gains `pid_start` and `cancel_asked_by`.

`pid_start` (core/local.py process_identity: boot and start time) tells the
run's process from a later one that got its PID: a run whose PID was reused
shows as interrupted, and the server signals a command-line run only while
its PID is still that process. `cancel_asked_by` is written by the server
before it signals a command-line run, which reads it to say who stopped it.

A history.db written by the sshexec just before the database may have
`pid_start` already (it added the column itself): it is kept, with its values.
That sshexec said who cancelled a run in a file, runs/<id>/cancel, read only by
the run's own process while it ran; what it said is in the run's message
since, so the files are not copied. Older rows get NULL: no process identity
is known for them, and the server signals none of them.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ADDED = ("pid_start", "cancel_asked_by")


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    for name in ADDED:
        if name not in have:
            op.add_column("runs", sa.Column(name, sa.Text))


def downgrade() -> None:
    raise NotImplementedError("sshexec never downgrades a history")
