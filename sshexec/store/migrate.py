"""Running the migrations (Alembic, from code: sshexec ships no alembic.ini).

    upgrade(db)           the database to this sshexec's revision: `sshexec db upgrade`, and a SQLite history at first use
    known_revisions()     every revision this sshexec knows (a database at another one was made by a newer sshexec)

The migrations live in store/migrations/versions/, one file per revision, each
written by hand against SQLAlchemy Core and run in one transaction. On
PostgreSQL an advisory lock makes two `db upgrade` at once take turns; on
SQLite the caller holds a file lock (db.py).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from .schema import REVISION

log = logging.getLogger("sshexec")

SCRIPTS = Path(__file__).with_name("migrations")
# Any constant will do: it only has to be the same for every sshexec (pg_advisory_xact_lock's key).
UPGRADE_LOCK = 0x55_48_45_58


def config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(s.revision for s in ScriptDirectory.from_config(config()).walk_revisions())


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config()).get_current_head()


def _revision(conn) -> str | None:
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(db, target: str = REVISION) -> tuple[str | None, str]:
    """Migrate `db` (a store.db.Database) up to `target`; (revision before, revision after)."""
    from alembic import command
    from sqlalchemy import text

    with db.write() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": UPGRADE_LOCK})
        before = _revision(conn)  # read under the lock: another upgrade may have just finished
        command.upgrade(config(conn), target)
        after = _revision(conn)
    if before != after:
        log.info("database %s: schema revision %s -> %s", db.url, before or "(none)", after)
    return before, after
