"""Everything in the database, so that a machine needs nothing but its URL: each run's log and
artifacts, the server's API tokens and its browser sessions.

Tables log_chunks, artifact_chunks, tokens and sessions; artifacts gains
`chunks` (and `path` is no longer required); runs gains an index for
`history prune --keep`.

On SQLite, what an sshexec before this revision kept in files beside
history.db is copied in, in the same transaction: every run's
runs/<id>/output.log, every artifact (runs/<id>/artifacts/<worker>/<name>, else
the path its row names) and tokens.json. The files are left where they were:
nothing reads them any more, and they may be removed once the upgrade is done.

Revision ID: 0002
Revises: 0001
"""

import json
import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("sshexec")

LOG_CHUNK = 64 * 1024  # as store/logs.py writes them when this revision was made
ARTIFACT_CHUNK = 1024 * 1024  # as store/artifacts.py


def upgrade() -> None:
    op.create_table(
        "log_chunks",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("pos", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "pos"),
    )
    op.create_table(
        "artifact_chunks",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "worker", "name", "seq"),
    )
    op.create_table(
        "tokens",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False, unique=True),
    )
    op.create_table(
        "sessions",
        sa.Column("id_sha256", sa.Text, primary_key=True),
        sa.Column("token_sha256", sa.Text, nullable=False),
        sa.Column("csrf", sa.Text, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
    )
    op.create_index("sessions_token", "sessions", ["token_sha256"])
    with op.batch_alter_table("artifacts") as batch:
        batch.alter_column("path", existing_type=sa.Text, nullable=True)
        batch.alter_column("size", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)
        batch.add_column(sa.Column("chunks", sa.Integer))
    op.create_index("artifacts_run", "artifacts", ["run_id", "worker", "name"])
    op.create_index("runs_runbook_started", "runs", ["runbook", "started"])
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _import_files(bind, Path(bind.engine.url.database).parent)


def _import_files(bind, home: Path) -> None:
    """The logs, artifacts and tokens an sshexec before this revision kept beside history.db."""
    logs = arts = toks = 0
    meta = sa.MetaData()
    runs = sa.Table("runs", meta, autoload_with=bind)
    artifacts = sa.Table("artifacts", meta, autoload_with=bind)
    log_chunks = sa.Table("log_chunks", meta, autoload_with=bind)
    artifact_chunks = sa.Table("artifact_chunks", meta, autoload_with=bind)
    tokens = sa.Table("tokens", meta, autoload_with=bind)
    for (run_id,) in bind.execute(sa.select(runs.c.id)).all():
        path = home / "runs" / run_id / "output.log"
        if path.is_file():
            pos = 0
            with open(path, "rb") as fh:
                while data := fh.read(LOG_CHUNK):
                    bind.execute(log_chunks.insert().values(run_id=run_id, pos=pos, data=data))
                    pos += len(data)
            logs += 1
    rows = bind.execute(sa.select(artifacts.c.run_id, artifacts.c.worker, artifacts.c.name, artifacts.c.path)).all()
    for run_id, worker, name, recorded in rows:
        usual = home / "runs" / run_id / "artifacts" / worker / name
        found = next((p for p in (usual, *([Path(recorded)] if recorded else [])) if p.is_file()), None)
        where = (artifacts.c.run_id == run_id) & (artifacts.c.worker == worker) & (artifacts.c.name == name)
        if found is None:
            log.warning("artifact %s/%s of run %s: no file at %s; its row is kept, without its bytes", worker, name, run_id, usual)
            continue
        seq = size = 0
        with open(found, "rb") as fh:
            while data := fh.read(ARTIFACT_CHUNK):
                bind.execute(artifact_chunks.insert().values(run_id=run_id, worker=worker, name=name, seq=seq, data=data))
                seq += 1
                size += len(data)
        bind.execute(artifacts.update().where(where).values(chunks=seq, size=size))
        arts += 1
    tokens_file = home / "tokens.json"
    if tokens_file.is_file():
        for e in json.loads(tokens_file.read_text()).get("tokens", []):
            bind.execute(tokens.insert().values(name=e["name"], role=e["role"], created=e["created"], sha256=e["sha256"]))
            toks += 1
    if logs or arts or toks:
        log.info("copied into the database from %s: %d run logs, %d artifacts, %d tokens (the files are left as they were)", home, logs, arts, toks)


def downgrade() -> None:
    raise NotImplementedError("sshexec never downgrades a history")
