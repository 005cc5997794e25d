"""GET /metrics: what monitoring wants to know, in Prometheus' text format, via prometheus-client.

Every value is read from the history's database when Prometheus scrapes (one
collector, a few GROUP BY queries), never counted in this server's memory: a
scrape of any server sharing the database sees the runs of all of them, the
command line's included, and a restart loses nothing.

    sshexec_runs{runbook, status}                    runs in the history ("running" includes a run whose process died)
    sshexec_step_duration_seconds{runbook}           histogram of finished step attempts (skipped and carried ones left out)
    sshexec_queue_depth                              runs queued for a server node to claim them
    sshexec_runs_running{node}                       running runs per server node (a command line's: its host)
    sshexec_runs_waiting                             runs waiting for an approval
    sshexec_worker_healthy{worker}                   1/0 from the server's cached check (GET /api/workers); none before the first
    sshexec_worker_check_age_seconds                 how old that check is
    sshexec_notification_deliveries{state}           notification deliveries by state (pending, delivered, failed)
    sshexec_notification_failed_attempts_total       attempts that failed (an HTTP status >= 300, or no answer)

Access: a token of any role (Authorization: Bearer, as Prometheus' `authorization`
setting sends it), or `serve --metrics-bind HOST:PORT`, a listener of its own with no
login, for a scraper that cannot send a token (loopback unless --insecure-bind).
"""

from __future__ import annotations

from typing import Callable, Iterator

from sqlalchemy import and_, case, func, select

from ..store.schema import runs, steps

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _cluster_stats(db) -> tuple[int, dict[str, int]]:
    """(queue depth, running runs per node): a run a server node claimed counts for its node (every node that is
    up shows, with 0 if it runs nothing), a command line's run for the host it runs on."""
    from ..store.cluster_schema import nodes
    from ..store.queue import depth

    where = func.coalesce(runs.c.node, runs.c.host)
    with db.read() as c:
        rows = c.execute(select(where, func.count()).where(runs.c.status == "running").group_by(where)).all()
        up = c.execute(select(nodes.c.name).where(nodes.c.state == "up")).scalars().all()
    return depth(db), {**{name: 0 for name in up}, **{node or "?": n for node, n in rows}}


class Collector:
    """A prometheus-client collector over the history (and the server's cached check)."""

    def __init__(self, db, health=None, *, cluster_stats: Callable = _cluster_stats):
        self.db = db
        self.health = health  # server/workers.py HealthCache, or None (a --metrics-bind without one)
        self.cluster_stats = cluster_stats

    def describe(self):
        return []  # collected at scrape time only: nothing to check when registering

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        with self.db.read() as c:
            by_status = c.execute(select(runs.c.runbook, runs.c.status, func.count()).group_by(runs.c.runbook, runs.c.status)).all()
            duration = steps.c.finished - steps.c.started
            finished = and_(steps.c.finished.isnot(None), steps.c.started.isnot(None), steps.c.carried_from.is_(None), steps.c.status.notin_(("running", "skipped", "waiting")))
            cols = [func.sum(case((duration <= b, 1), else_=0)) for b in BUCKETS]
            hist = c.execute(
                select(runs.c.runbook, func.count(), func.sum(duration), *cols).select_from(steps.join(runs, runs.c.id == steps.c.run_id)).where(finished).group_by(runs.c.runbook)
            ).all()  # fmt: skip
        g = GaugeMetricFamily("sshexec_runs", "Runs in the history by runbook and status", labels=["runbook", "status"])
        for runbook, status, n in by_status:
            g.add_metric([runbook, status], n)
        yield g
        waiting = sum(n for _, status, n in by_status if status == "waiting")
        yield GaugeMetricFamily("sshexec_runs_waiting", "Runs waiting for an approval", value=waiting)
        h = HistogramMetricFamily("sshexec_step_duration_seconds", "Duration of finished step attempts", labels=["runbook"])
        for runbook, count, total, *cumulative in hist:
            buckets = [(str(b), int(n or 0)) for b, n in zip(BUCKETS, cumulative)] + [("+Inf", int(count))]
            h.add_metric([runbook], buckets, float(total or 0.0))
        yield h
        depth, per_node = self.cluster_stats(self.db)
        yield GaugeMetricFamily("sshexec_queue_depth", "Runs queued for a server", value=depth)
        r = GaugeMetricFamily("sshexec_runs_running", "Running runs per node", labels=["node"])
        for node, n in sorted(per_node.items()):
            r.add_metric([node], n)
        yield r
        yield from self._workers(GaugeMetricFamily)
        yield from self._notifications(GaugeMetricFamily, CounterMetricFamily)

    def _workers(self, Gauge) -> Iterator:
        report = self.health.cached() if self.health is not None else None
        g = Gauge("sshexec_worker_healthy", "1 if the worker passed the server's last check, else 0", labels=["worker"])
        for w in report.workers if report else ():
            g.add_metric([w.worker], 1 if w.healthy else 0)
        yield g
        if report is not None and report.checked_at:
            import time

            yield Gauge("sshexec_worker_check_age_seconds", "Age of the server's last check of the workers", value=max(0.0, time.time() - report.checked_at))

    def _notifications(self, Gauge, Counter) -> Iterator:
        from ..store.notify import failure_counts

        states, failed = failure_counts(self.db)
        g = Gauge("sshexec_notification_deliveries", "Notification deliveries by state", labels=["state"])
        for state in ("pending", "delivered", "failed"):
            g.add_metric([state], states.get(state, 0))
        yield g
        yield Counter("sshexec_notification_failed_attempts", "Notification attempts that failed (HTTP status >= 300, or no answer)", value=failed)


def registry_for(db, health=None):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(db, health))
    return registry


def exposition(registry) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_apart(registry, host: str, port: int):
    """`serve --metrics-bind`: prometheus-client's own listener, in a thread; (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry)
