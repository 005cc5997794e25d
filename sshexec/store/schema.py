"""The history's tables, as this sshexec's code reads and writes them (SQLAlchemy Core).

    runs             one row per run: what ran, who asked, where its process is (and which process), how it ended
    steps            one row per attempt of a step on a worker (or a skipped / carried one)
    log_chunks       the run's masked log as it streamed: byte ranges [pos, pos + len(data)) in order
    artifacts        a file a step collected: its size, and in how many chunks it is stored
    artifact_chunks  the file's bytes, CHUNK at a time, so that no one ever holds a whole file in memory
    tokens           the server's API tokens: name, role, the SHA-256 of the token (never the token)
    sessions         the server's browser sessions: the SHA-256 of the cookie's id, its token, CSRF, expiry
    queue, nodes, schedules, schedule_ticks, leases, settings   the cluster's (cluster_schema.py)

Issue 21's tables are defined beside the code that uses them, on this metadata:
audit (store/audit.py), notify_* (store/notify.py), approvals (store/approvals.py).

The migrations (store/migrations/versions/) build exactly this; REVISION is
the last of them, and a unit test holds the two together. Times are Unix
seconds (float), as the history always kept them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, MetaData, PrimaryKeyConstraint, Table, Text

REVISION = "0005"  # the newest migration in migrations/versions/

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", Text, primary_key=True),
    Column("runbook", Text, nullable=False),
    Column("runbook_path", Text),
    Column("inventory", Text),
    Column("started", Float, nullable=False),
    Column("finished", Float),
    Column("status", Text, nullable=False),
    Column("exit_code", Integer),
    Column("message", Text),
    Column("pid", Integer),
    Column("host", Text),
    Column("variables", Text),  # JSON, masked
    Column("started_by", Text),
    Column("runbook_hash", Text),
    Column("retry_of", Text),
    Column("options", Text),  # JSON: what the run was asked ({"worker": ...})
    Column("pid_start", Text),  # which process `pid` was (core/local.py process_identity): a PID reused later is not the run's
    Column("cancel_asked_by", Text),  # who asked the run's process to stop from outside (the server), before signalling it
    Column("node", Text),  # the server node that claimed the run from the queue (cluster.py); NULL: a command-line run
    Column("epoch", Integer),  # the claim's epoch: a node writes the run's end only while it still holds this claim
    Index("runs_started", "started"),
    Index("runs_runbook_started", "runbook", "started"),
    Index("runs_node_status", "node", "status"),
)  # fmt: skip

steps = Table(
    "steps", metadata,
    Column("run_id", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("step", Text, nullable=False),
    Column("worker", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("exit_code", Integer),
    Column("started", Float),
    Column("finished", Float),
    Column("message", Text),
    Column("outputs", Text),  # JSON, sensitive values masked
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("carried_from", Text),
    Column("image_digest", Text),  # the image that ran, as the worker's RepoDigest (name@sha256:...), for --retry-failed
    Column("bundle_hash", Text),  # SHA-256 of the step's bundle (script, helpers, files:)
    PrimaryKeyConstraint("run_id", "step", "worker", "attempt"),
)  # fmt: skip

log_chunks = Table(
    "log_chunks", metadata,
    Column("run_id", Text, nullable=False),
    Column("pos", BigInteger, nullable=False),  # the offset of data's first byte in the run's log
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("run_id", "pos"),
)  # fmt: skip

artifacts = Table(
    "artifacts", metadata,
    Column("run_id", Text, nullable=False),
    Column("step", Text, nullable=False),
    Column("worker", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("path", Text),  # where an sshexec before the database kept the file; NULL since
    Column("size", BigInteger, nullable=False),
    Column("chunks", Integer),  # NULL: the bytes are not in the database (a file gone before the upgrade)
    Index("artifacts_run", "run_id", "worker", "name"),
)  # fmt: skip

artifact_chunks = Table(
    "artifact_chunks", metadata,
    Column("run_id", Text, nullable=False),
    Column("worker", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("run_id", "worker", "name", "seq"),
)  # fmt: skip

tokens = Table(
    "tokens", metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("sha256", Text, nullable=False, unique=True),
)  # fmt: skip

sessions = Table(
    "sessions", metadata,
    Column("id_sha256", Text, primary_key=True),
    Column("token_sha256", Text, nullable=False),
    Column("csrf", Text, nullable=False),
    Column("expires", Float, nullable=False),
    Index("sessions_token", "token_sha256"),
)  # fmt: skip
