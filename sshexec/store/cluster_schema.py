"""The cluster's tables: the run queue, the server nodes, schedules and their ticks, leases, settings.

    queue           a run submitted for the server nodes (`sshexec submit`, POST /api/runs, a schedule):
                    FIFO by `seq`; `state` queued -> claimed; the claim's node and epoch
    nodes           each `sshexec serve` node: where it is, its task cap, when it last checked in,
                    whether it drains, and whether it stopped or was found lost
    schedules       a runbook started on a cron expression
    schedule_ticks  one row per (schedule, tick) that fired: the primary key makes a tick fire once,
                    whichever nodes try
    leases          a lease held by one node at a time, renewed at each check-in ("maintenance")
    settings        cluster-wide settings every node reads ("retention")

The runs a node claims carry `runs.node` and `runs.epoch` (schema.py), which
fence its writes: see cluster.py. Revision 0004 builds these tables.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, PrimaryKeyConstraint, Table, Text

from .schema import metadata

queue = Table(
    "queue", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # FIFO order
    Column("run_id", Text, nullable=False, unique=True),
    Column("runbook", Text, nullable=False),  # a runbook's name in the nodes' --runbooks directory
    Column("variables", Text),  # JSON: the --var values (plain only)
    Column("submitted", Float, nullable=False),
    Column("submitted_by", Text),
    Column("state", Text, nullable=False),  # queued | claimed
    Column("node", Text),
    Column("epoch", Integer, nullable=False, server_default="0"),  # +1 at each claim
    Column("claimed", Float),
    Column("retry_of", Text),  # a run requeued after its node was lost: the interrupted run it retries
    Index("queue_state_seq", "state", "seq"),
)  # fmt: skip

nodes = Table(
    "nodes", metadata,
    Column("name", Text, primary_key=True),
    Column("host", Text),
    Column("pid", Integer),
    Column("url", Text),
    Column("task_cap", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("draining", Integer, nullable=False, server_default="0"),
    Column("state", Text, nullable=False),  # up | stopped | lost
    Column("version", Text),
)  # fmt: skip

schedules = Table(
    "schedules", metadata,
    Column("name", Text, primary_key=True),
    Column("cron", Text, nullable=False),
    Column("runbook", Text, nullable=False),
    Column("variables", Text),  # JSON
    Column("created", Float, nullable=False),
    Column("created_by", Text),
    Column("last_tick", Float),  # the last tick that fired (Unix seconds)
)  # fmt: skip

schedule_ticks = Table(
    "schedule_ticks", metadata,
    Column("schedule", Text, nullable=False),
    Column("tick", Float, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("node", Text),
    Column("fired", Float, nullable=False),
    PrimaryKeyConstraint("schedule", "tick"),
)  # fmt: skip

leases = Table(
    "leases", metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires", Float, nullable=False),
    Column("since", Float, nullable=False),
)  # fmt: skip

settings = Table(
    "settings", metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),  # JSON
)  # fmt: skip
