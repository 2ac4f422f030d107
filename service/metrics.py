"""Prometheus metrics, served on a listener of their own (METRICS_PORT, off by default) so
they are never public by accident.

Labels are route templates, methods, statuses and kinds: never a user id, which would be
both a secret and an unbounded label set. With several workers, prometheus-client's
multiprocess mode adds up the workers' values (see `serve_metrics`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

REQUESTS = Counter(
    "logikids_sync_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "logikids_sync_request_duration_seconds",
    "Time from request start to the end of the response, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL = Gauge(
    "logikids_sync_pool_connections",
    "Database pool connections: size (open), in_use, and waiting (requests queued for one).",
    ["state"],
    multiprocess_mode="livesum",
)
RECORDS = Gauge(
    "logikids_sync_records",
    "Records stored in user_sync_data (refreshed every minute).",
    multiprocess_mode="max",
)
RATE_LIMITED = Counter(
    "logikids_sync_rate_limited_total", "Requests refused with 429, by limit.", ["limit"]
)
CLEANUP_ERASED = Counter(
    "logikids_sync_cleanup_erased_total", "Inactive records erased by the scheduled cleanup."
)
DATABASE_ERRORS = Counter(
    "logikids_sync_database_errors_total",
    "Requests that failed because PostgreSQL was unreachable or the pool exhausted, by kind.",
    ["kind"],
)


def observe_pool(pool: AsyncConnectionPool) -> None:
    """Copy the pool's statistics into the gauges (called every few seconds)."""
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    POOL.labels("size").set(size)
    POOL.labels("in_use").set(size - stats.get("pool_available", 0))
    POOL.labels("waiting").set(stats.get("requests_waiting", 0))


def prepare_multiprocess(workers: int) -> None:
    """Before workers start: with more than one, give prometheus-client a shared folder.

    Must run before any worker imports prometheus_client; a fresh folder per start (stale
    files would add a previous run's counts), removed when this process exits.
    """
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="logikids-metrics-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def forget_this_process() -> None:
    """A worker shutting down: drop its live gauges from the multiprocess sum, so the
    pool sizes of workers that have exited do not count forever."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


def serve_metrics(*, host: str, port: int) -> None:
    """Serve /metrics from this (the supervising) process in a background thread."""
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
    logger.info("Metrics on http://%s:%d/metrics", host, port)
