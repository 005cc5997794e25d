"""`sshexec serve` and `sshexec token`: the web server over the history, and its API tokens.

FastAPI and uvicorn load only when `serve` runs, so every other command starts as fast as before.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from invoke import task

from ..errors import InputError, SshexecError
from . import common, ui
from .complete import option_values
from .common import DB_HELP, HELP_INVENTORY, HELP_JSON, optional_operands, positional


@task(
    help={
        "bind": "HOST:PORT to listen on (default 127.0.0.1:8080; port 0: any free port)",
        "runbooks": "the directory whose *.yaml runbooks may be started (default: runbooks)",
        "inventory": HELP_INVENTORY,
        "tls_cert": "PEM certificate: serve HTTPS (with --tls-key)",
        "tls_key": "PEM private key of --tls-cert",
        "insecure_bind": "allow a non-loopback --bind without TLS (tokens then cross the network in clear)",
        "parallel": common.HELP_PARALLEL,
        "max_body": "the largest request body accepted, e.g. 1M, 256K (default 1M); larger: 413",
        "forwarded_allow_ips": "behind a reverse proxy: its addresses or networks, comma-separated, whose X-Forwarded-For names the client "
        "(the brake on failed logins counts per client); default: none, the peer is the client",
        "stream_recheck": "seconds between checks that an open log stream's token or session is still valid (default 30): "
        "a revoked token's streams end within that",
        "node": "this server's name among the nodes sharing the database (default: the host name)",
        "task_cap": "runs this node runs at once, claimed from the queue oldest first (default 5)",
        "node_stale": "a node silent this long is lost, and its runs interrupted (default 30s); every node of a cluster should give the same",
        "drain_timeout": "SIGTERM: how long the node's runs may go on before they are cancelled (default 10m; 0: cancel at once)",
        "config": "the server's config file (YAML): notifications: endpoints, each with name, url, events, secret_env, attempts, backoff",
        "metrics_bind": "HOST:PORT: serve /metrics there too, with no login, for a scraper without a token (loopback unless --insecure-bind)",
        "check_every": "how often the node holding the maintenance lease checks the workers for every node's /workers (default 10m; 0: never)",
        **DB_HELP,
    }
)
def serve(
    c, bind="127.0.0.1:8080", runbooks="runbooks", inventory=None, tls_cert=None, tls_key=None, insecure_bind=False, parallel=0, max_body="1M",
    forwarded_allow_ips=None, stream_recheck="30", db_password_file=None, db=None, node=None, task_cap=5, node_stale="30s", drain_timeout="10m", check_every="10m",
    config=None, metrics_bind=None,
):  # fmt: skip
    """A web page and HTTP API: runs, live logs, workers, triggers.

    Pages at /, the API at /api (described at /docs). Log in with a token of
    `sshexec token create`. Runs started here and from the command line
    share the history's database (--db): each side sees the other's runs,
    live, and servers on several machines can share one PostgreSQL. Runbooks come
    only from --runbooks; their sensitive variables only from this process's
    environment. Listens on loopback unless --bind says otherwise, which needs
    --tls-cert/--tls-key or --insecure-bind.

    Runs are queued (POST /api/runs, the page's Run button, `sshexec submit`)
    and every node sharing the database claims them, oldest first, up to its
    --task-cap. Nodes check in; one silent for --node-stale is lost and its
    runs interrupted (or requeued: a runbook's `on_node_loss: requeue`).
    /health answers 503 while the node drains (`sshexec nodes drain NAME`),
    for a load balancer. SIGTERM drains the node (its runs finish, up to
    --drain-timeout), then stops; Ctrl-C, or a second SIGTERM, cancels its
    runs (recorded cancelled) and stops.
    """
    from ..config.inventory import load_inventory

    try:
        from ..server.app import create_app, is_loopback, parse_bind, parse_proxies
        from ..server.app import serve as run_server
        from ..server.runs import Settings
    except ImportError as exc:
        raise SshexecError(f"sshexec serve needs {exc.name or 'its extra packages'}, which is not installed", hint="pip install 'sshexec[server]'") from None

    host, port = parse_bind(bind)
    limit = _size(max_body, "--max-body")
    proxies = parse_proxies(forwarded_allow_ips)
    recheck = common.seconds(stream_recheck, "--stream-recheck")
    if not 0 < recheck <= 3600:
        raise InputError(f"--stream-recheck must be more than 0 and at most 3600 seconds, not {stream_recheck}")
    if bool(tls_cert) != bool(tls_key):
        raise InputError("--tls-cert and --tls-key go together", hint="give both, PEM files")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path and not Path(path).is_file():
            raise InputError(f"{flag} {path}: no such file")
    if not is_loopback(host) and not tls_cert:
        if not insecure_bind:
            raise InputError(
                f"--bind {bind} listens beyond this machine, and tokens would cross the network in clear",
                hint="give --tls-cert and --tls-key, or --insecure-bind if the network is yours (a VPN, say)",
            )  # fmt: skip
        ui.warn(f"--insecure-bind: serving plain HTTP on {bind}; tokens and session cookies cross the network unencrypted")
    runbooks_dir = Path(runbooks)
    if not runbooks_dir.is_dir():
        raise InputError(f"--runbooks {runbooks}: no such directory")
    inv = load_inventory(inventory)  # a bad inventory: exit 2 now, not at the first run
    database = common.database(db, db_password_file)  # unreachable: exit 3 now
    cap = common.count(task_cap, "--task-cap")
    stale = common.seconds(node_stale, "--node-stale")
    if not 2 <= stale <= 3600:
        raise InputError(f"--node-stale must be from 2 s to 1 h, not {node_stale}")
    if node is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", node):
        raise InputError(f"--node {node!r}: 1 to 63 letters, digits, _ . - starting with a letter or digit")
    if config:
        from .teams import apply_server_config

        apply_server_config(config, database)
    settings = Settings(
        runbooks=runbooks_dir.resolve(), inventory=str(inv.path), parallel=common.parallel(parallel), any_order=common.any_order(),
        max_body=limit, stream_recheck=recheck, node=node, task_cap=cap, node_stale=stale, drain_timeout=common.seconds(drain_timeout, "--drain-timeout"),
        health_every=common.seconds(check_every, "--check-every"),
    )  # fmt: skip
    _name_free(database, node, stale)
    app = create_app(settings, db=database, secure_cookies=bool(tls_cert))
    scheme = "https" if tls_cert else "http"
    if metrics_bind:
        from ..server.metrics import serve_apart

        m_host, m_port = parse_bind(metrics_bind)
        if not is_loopback(m_host) and not insecure_bind:
            raise InputError(f"--metrics-bind {metrics_bind} listens beyond this machine, with no login", hint="bind it to 127.0.0.1, or add --insecure-bind if that network may read the metrics")
        m_server, _ = serve_apart(app.state.metrics, m_host, m_port)
        ui.info(f"sshexec serve: metrics at http://{metrics_bind.rsplit(':', 1)[0]}:{m_server.server_address[1]}/metrics (no login)")

    def ready(server) -> None:
        bound = server.servers[0].sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        node = app.state.runs.node
        at = f" · node {node.name}, task cap {node.task_cap}" if node is not None else ""
        ui.info(f"sshexec serve: {scheme}://{shown}:{bound[1]}/ · runbooks {settings.runbooks} · history {app.state.history.url}{at} · pid {os.getpid()}")

    run_server(app, host, port, tls_cert=tls_cert, tls_key=tls_key, on_ready=ready, forwarded_allow_ips=proxies)


def _name_free(database, node: str | None, stale: float) -> None:
    """InputError (exit 2) if a live node already has this name: two servers must not share one."""
    import socket

    from ..store.cluster import live_holder

    name = node or socket.gethostname()
    holder = live_holder(database, name, stale)
    if holder is not None:
        raise InputError(
            f"node {name!r} is checked in already, from {holder.host} (pid {holder.pid}), {time.time() - holder.last_seen:.0f} s ago",
            field="--node", hint="give this server another --node NAME, or stop that one first",
        )  # fmt: skip


def _size(text: str, option: str) -> int:
    """A size in bytes (1M, 256K, 4096); InputError (exit 2) if it is not one, or is zero."""
    from ..core.units import parse_size

    try:
        n = parse_size(str(text))
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None
    if n < 1:
        raise InputError(f"{option} must be at least 1 byte, not {text}")
    return n


@option_values(action=("create", "list", "revoke"), role=("viewer", "operator", "admin"))
@optional_operands("name")
@task(
    positional=["action", "name"],
    help={
        "action": "create | list | revoke",
        "name": "the token's name (create, revoke)",
        "role": "create: viewer (reads), operator (also starts and cancels runs) or admin (also cancels command-line runs)",
        "json": HELP_JSON,
        **DB_HELP,
    },
)
def token(c, action=None, name=None, role="viewer", json=False, db_password_file=None, db=None):
    """API tokens for sshexec serve: create, list or revoke them.

    `token create NAME --role viewer|operator|admin` prints the new token, alone
    on stdout: it is shown once and stored only as its SHA-256, in the
    history's database (--db), where every server sharing it finds it.
    `token revoke NAME` ends it at once, its browser sessions included.
    """
    from ..store.tokens import TokenStore

    action = positional(action, "the action", "sshexec token create|list|revoke [NAME]")
    store = TokenStore(common.database(db, db_password_file))
    if action == "create":
        secret = store.create(positional(name, "the token's name", "sshexec token create NAME --role ROLE"), role)
        common.audit("token.create", target=name, detail={"role": role}, db=db, password_file=db_password_file)
        print(secret, flush=True)
        ui.info(f"token {name!r} ({role}) created; it is shown only now. Use it as: Authorization: Bearer TOKEN")
    elif action == "list":
        tokens = store.list()
        if json:
            from ..views import TokenView

            ui.print_json([TokenView(**t.to_dict()).model_dump() for t in tokens])
            return
        from .tables import Col, show

        rows = [[ui.safe(t.name), t.role, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created))] for t in tokens]
        show("sshexec tokens", (Col("name"), Col("role"), Col("created")), rows)
    elif action == "revoke":
        store.revoke(positional(name, "the token's name", "sshexec token revoke NAME"))
        common.audit("token.revoke", target=name, db=db, password_file=db_password_file)
        ui.info(f"token {name!r} revoked")
    else:
        raise InputError(f"unknown token action {action!r}: create, list or revoke")


TASKS = (serve, token)
