"""The command line: a thin argparse front over the service's modules (docs/operations.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from service.config import ConfigError, Settings
from service.logs import configure_logging

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logikids-sync",
        description="Zero-knowledge sync store for Logikids (configuration: environment, "
        "see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="listen address (default: $HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: $PORT or 5175)")
    serve.add_argument("--workers", type=int, help="worker processes (default: $WORKERS or 1)")

    migrate = commands.add_parser("migrate", help="apply pending migrations")
    migrate.add_argument(
        "--status", action="store_true", help="show each migration's state, change nothing"
    )
    cleanup = commands.add_parser(
        "cleanup", help="erase records not accessed for N days (GDPR), in small batches"
    )
    cleanup.add_argument(
        "--inactive-days", type=int, help="default: $INACTIVE_DAYS or 730", metavar="N"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="count, erase nothing")

    legacy = commands.add_parser(
        "import-legacy", help="import the TypeScript service's data/sync/<userId>.json files"
    )
    legacy.add_argument("directory", metavar="DIR")
    legacy.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")

    sql = commands.add_parser(
        "sql", help="run a named query from queries/ through psql (same text the service runs)"
    )
    sql.add_argument("name", metavar="NAME", nargs="?", help="query name; omit to list them")
    sql.add_argument("params", nargs="*", metavar="param=value")
    sql.add_argument("--print", action="store_true", help="show the statement, run nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sql" and (args.print or not args.name):
        # Listing the queries and printing one need no database, so no DATABASE_URL.
        from service.sqlcmd import run_sql_command

        return run_sql_command(None, name=args.name, params=args.params, print_only=True)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"logikids-sync: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(log_format=settings.log_format, log_level=settings.log_level)
    if args.command == "serve":
        return serve(settings, args)
    if args.command == "migrate":
        return asyncio.run(migrate(settings, status_only=args.status))
    if args.command == "cleanup":
        from service.cleanup import run_cleanup_command

        days = args.inactive_days if args.inactive_days is not None else settings.inactive_days
        return asyncio.run(run_cleanup_command(settings, inactive_days=days, dry_run=args.dry_run))
    if args.command == "import-legacy":
        from service.legacy import run_import_command

        return asyncio.run(
            run_import_command(settings, directory=args.directory, dry_run=args.dry_run)
        )
    if args.command == "sql":
        from service.sqlcmd import run_sql_command

        return run_sql_command(settings, name=args.name, params=args.params, print_only=args.print)
    raise AssertionError(args.command)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Run uvicorn; each worker builds its app (and pool) from the environment."""
    import os

    settings = settings.with_changes(
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=args.workers or settings.workers,
    )
    # Workers are separate processes that read the environment, so flags travel through it.
    os.environ.update(
        {"HOST": settings.host, "PORT": str(settings.port), "WORKERS": str(settings.workers)}
    )
    if settings.metrics_port:
        from service.metrics import prepare_multiprocess, serve_metrics

        prepare_multiprocess(settings.workers)
        serve_metrics(host=settings.metrics_host, port=settings.metrics_port)
    # Wait for PostgreSQL here, once, before any worker starts: an unreachable database
    # is then one clear line and exit status 3, whatever the number of workers.
    from service.db import DatabaseUnreachable, wait_for_database

    try:
        asyncio.run(wait_for_database(settings))
    except DatabaseUnreachable as exc:
        logger.error("Cannot start: %s", exc)
        return 3
    from service.server import run_server

    return run_server(settings)


async def migrate(settings: Settings, *, status_only: bool) -> int:
    import psycopg

    from service import migrations
    from service.db import maintenance_connection, wait_for_database

    try:
        await wait_for_database(settings)
        async with await maintenance_connection(settings) as conn:
            if status_only:
                rows = await migrations.status(conn)
                for row in rows:
                    when = f"  {row.applied_at:%Y-%m-%d %H:%M:%S%z}" if row.applied_at else ""
                    print(f"{row.version:<32} {row.state}{when}")
                return 1 if any(r.state == "changed" for r in rows) else 0
            applied = await migrations.migrate(conn)
    except (migrations.MigrationError, RuntimeError, psycopg.Error) as exc:
        print(f"logikids-sync: migrate failed: {exc}", file=sys.stderr)
        return 1
    print("Applied: " + ", ".join(applied) if applied else "Nothing to apply: up to date.")
    return 0
