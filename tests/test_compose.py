"""Checks of the container files: docker-compose.yml, Dockerfile and .dockerignore.

No Docker engine is needed: the files are parsed and checked against the service's own
configuration (service/config.py) so the two cannot drift apart, and their healthchecks
are run for real against a local PostgreSQL and service. When a `docker compose` client
is installed, the compose file is also validated by it (`config -q` needs no engine).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.config import Settings
from service.localpg import bindir, free_port
from tests.processes import service_process

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_SOURCE = ROOT / "service" / "config.py"

PGDATA = "/var/lib/postgresql/data"


# --- helpers -----------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose().get("services") or {}
    assert name in services, f"no service {name!r} in docker-compose.yml"
    return services[name]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose forms it uses."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def healthcheck_command(svc: dict[str, Any]) -> list[str]:
    test = (svc.get("healthcheck") or {}).get("test")
    assert test, "service has no healthcheck"
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    return [str(part) for part in test]


def python_c_argument(argv: list[str]) -> str:
    """The code of a `python -c CODE` command line."""
    assert "-c" in argv, f"not a `python -c` command: {argv}"
    assert any("python" in word for word in argv[: argv.index("-c")]), argv
    return argv[argv.index("-c") + 1]


def volume_mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, short ("src:dst[:mode]") or long syntax."""
    mounts = []
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            parts = str(volume).split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return mounts


@functools.cache
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comment lines inside a continuation
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def instructions(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; fails on the shell form."""
    assert args.startswith("["), f"not exec form (JSON array): {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def split_options(args: str) -> tuple[dict[str, str], list[str]]:
    """`--opt=value ... rest` → ({opt: value}, rest words)."""
    options: dict[str, str] = {}
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    return options, words


def copied_directories() -> dict[str, str]:
    """For each project directory a COPY takes from the build context: where it lands."""
    workdir = "/"
    landed: dict[str, str] = {}
    for keyword, args in dockerfile():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        if keyword not in ("COPY", "ADD"):
            continue
        options, words = split_options(args)
        if "from" in options or args.startswith("["):
            continue
        *sources, dest = words
        dest = posixpath.normpath(posixpath.join(workdir, dest))
        for source in sources:
            name = source.strip("/").removeprefix("./")
            if name in ("", "."):  # `COPY . /app`: the whole context
                for child in ROOT.iterdir():
                    if child.is_dir():
                        landed[child.name] = posixpath.join(dest, child.name)
            elif (ROOT / name).is_dir():
                # Docker copies a directory's contents, so the destination names the directory.
                landed[name] = dest
    return landed


@functools.cache
def config_env_names() -> frozenset[str]:
    """Every environment variable service/config.py reads: env.get("X"), _int(env, "X")..."""
    tree = ast.parse(CONFIG_SOURCE.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, args = node.func, node.args
        candidate = None
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "get"
            and isinstance(func.value, ast.Name)
            and func.value.id == "env"
            and args
        ):
            candidate = args[0]
        elif len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id == "env":
            candidate = args[1]
        if isinstance(candidate, ast.Constant) and isinstance(candidate.value, str):
            names.add(candidate.value)
    return frozenset(names)


# --- docker-compose.yml: postgres ---------------------------------------------------------


def test_postgres_image_is_16_alpine() -> None:
    assert service("postgres")["image"] == "postgres:16-alpine"


def test_postgres_data_lives_in_a_declared_named_volume() -> None:
    volumes = compose().get("volumes") or {}
    assert "postgres-data" in volumes
    assert ("postgres-data", PGDATA) in volume_mounts(service("postgres"))


def test_postgres_has_no_initdb_mount() -> None:
    """The service migrates itself; an initdb mount would run only on a fresh volume."""
    for svc_name, svc in compose()["services"].items():
        for source, target in volume_mounts(svc):
            assert "docker-entrypoint-initdb.d" not in target, (svc_name, source, target)


def test_postgres_port_if_published_is_loopback_only() -> None:
    for port in service("postgres").get("ports") or []:
        host_ip = port.get("host_ip", "") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"PostgreSQL published beyond loopback: {port}"


def test_postgres_healthcheck_runs_against_a_real_server(pg_server) -> None:
    """pg_isready, for the user and database the container creates, answers 0 from a
    running server and non-zero where none listens."""
    env = environment(service("postgres"))
    test = healthcheck_command(service("postgres"))
    argv = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
    assert argv[0] == "pg_isready"
    assert argv[argv.index("-U") + 1] == env["POSTGRES_USER"]
    assert argv[argv.index("-d") + 1] == env["POSTGRES_DB"]
    command = [str(bindir() / "pg_isready"), *argv[1:]]
    up = subprocess.run(command, env=pg_server.client_env(), capture_output=True, timeout=30)
    assert up.returncode == 0, up
    nowhere = {**pg_server.client_env(), "PGHOST": "127.0.0.1", "PGPORT": str(free_port())}
    down = subprocess.run(command, env=nowhere, capture_output=True, timeout=30)
    assert down.returncode != 0, down


# --- docker-compose.yml: backend ----------------------------------------------------------


def test_backend_builds_from_the_dockerfile() -> None:
    build = service("backend")["build"]
    if isinstance(build, str):
        context, name = build, "Dockerfile"
    else:
        context, name = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / name).resolve() == DOCKERFILE


def test_backend_listens_on_all_interfaces_on_the_port_it_publishes() -> None:
    env = environment(service("backend"))
    assert env["HOST"] == "0.0.0.0"
    assert f"{env['PORT']}:{env['PORT']}" in [str(p) for p in service("backend")["ports"]]


def test_backend_database_url_reaches_the_postgres_service_as_its_user() -> None:
    url = urlsplit(environment(service("backend"))["DATABASE_URL"])
    pg = environment(service("postgres"))
    assert url.hostname == "postgres"  # the compose service, on the shared network
    assert url.port == 5432
    assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert url.path == f"/{pg['POSTGRES_DB']}"


def test_backend_waits_for_healthy_postgres() -> None:
    depends = service("backend")["depends_on"]
    assert isinstance(depends, dict), "depends_on must use the long form to carry a condition"
    assert depends["postgres"]["condition"] == "service_healthy"


def test_backend_stop_grace_period_outlasts_the_service_s_own_shutdown() -> None:
    """docker sends SIGKILL after stop_grace_period: it must exceed SHUTDOWN_TIMEOUT, or
    in-flight requests are cut off."""
    backend = service("backend")
    grace = backend["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace), grace
    shutdown = float(environment(backend).get("SHUTDOWN_TIMEOUT") or Settings.shutdown_timeout)
    assert int(grace[:-1]) > shutdown


def test_backend_environment_variables_are_ones_the_service_reads() -> None:
    known = config_env_names()
    # The extraction itself must work, or this test would pass vacuously.
    assert {"DATABASE_URL", "HOST", "PORT", "CORS_ORIGINS", "LOG_FORMAT"} <= known
    unknown = set(environment(service("backend"))) - known
    assert not unknown, f"backend sets variables service/config.py never reads: {unknown}"


def test_backend_metrics_listener_is_published_on_loopback_only() -> None:
    backend = service("backend")
    port = environment(backend)["METRICS_PORT"]
    published = [str(p) for p in backend["ports"] if str(p).rsplit(":", 1)[-1] == port]
    assert published == [f"127.0.0.1:{port}:{port}"]


@pytest.mark.slow
def test_backend_healthchecks_pass_against_a_running_service_and_fail_without_one(
    database_url,
) -> None:
    """The compose file's and the Dockerfile's healthcheck, run as docker runs them."""
    (check,) = instructions("HEALTHCHECK")
    snippets = {
        "docker-compose.yml": python_c_argument(healthcheck_command(service("backend"))[1:]),
        "Dockerfile": python_c_argument(exec_form(check[check.index("[") :])),
    }

    def run(code: str, port: int) -> int:
        env = {**os.environ, "PORT": str(port)}
        return subprocess.run([sys.executable, "-c", code], env=env, timeout=30).returncode

    with service_process(database_url) as base:
        for origin, code in snippets.items():
            assert run(code, urlsplit(base).port) == 0, origin
    for origin, code in snippets.items():
        assert run(code, free_port()) != 0, origin


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_exists_with_slim_base() -> None:
    assert DOCKERFILE.is_file()
    assert instructions("FROM")[0].split()[0] == "python:3.11-slim"


def test_dockerfile_cmd_runs_serve() -> None:
    (cmd,) = instructions("CMD")
    assert exec_form(cmd) == ["logikids-sync", "serve"]


def test_dockerfile_exposes_5175_and_listens_on_all_interfaces() -> None:
    assert "5175" in " ".join(instructions("EXPOSE")).replace("/tcp", "").split()
    env_words = " ".join(instructions("ENV")).split()
    assert "HOST=0.0.0.0" in env_words
    assert "PORT=5175" in env_words


def test_dockerfile_builds_the_wheel_with_the_sql_and_installs_it_from_the_lock() -> None:
    """The image runs the wheel, as tests/test_package.py does: the build stage has the
    SQL folders beside service/ (whose links the wheel resolves), the runtime stage
    installs the hash-checked lock and then the wheel alone, never the source tree."""
    landed = copied_directories()
    for name in ("service", "queries", "migrations"):
        assert name in landed, f"Dockerfile does not copy {name}/"
    root = posixpath.dirname(landed["service"])
    assert landed["queries"] == posixpath.join(root, "queries")
    assert landed["migrations"] == posixpath.join(root, "migrations")
    runs = instructions("RUN")
    assert any("pip wheel" in args and "--no-build-isolation" in args for args in runs)
    installs = [args for args in runs if "pip install" in args]
    assert any("--require-hashes" in a and "requirements/build.txt" in a for a in installs)
    assert any("--require-hashes" in a and "requirements.txt" in a for a in installs)
    assert any(re.search(r"pip install --no-deps \S+\.whl", a) for a in installs)
    assert not any(re.search(r"(-e|--editable)\s", a) for a in installs)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [(i, args) for i, (kw, args) in enumerate(dockerfile()) if kw == "USER"]
    assert users, "Dockerfile has no USER instruction"
    index, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    cmd_index = max(i for i, (kw, _) in enumerate(dockerfile()) if kw == "CMD")
    assert index < cmd_index


def test_dockerfile_healthcheck_is_python_in_exec_form() -> None:
    (check,) = instructions("HEALTHCHECK")
    options, words = split_options(check)
    assert words and words[0] == "CMD"
    python_c_argument(exec_form(check[check.index("[") :]))  # run for real above
    assert "curl" not in check and "wget" not in check  # neither is in the slim image
    assert set(options) <= {"interval", "timeout", "start-period", "start-interval", "retries"}


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in ("pyproject.toml", "service", "queries", "migrations"):
        assert (ROOT / required).exists(), required
        assert not any(fnmatch.fnmatch(required, pattern) for pattern in ignored), required
    for excluded in (".venv", ".git", ".local", "tests"):
        assert any(fnmatch.fnmatch(excluded, pattern) for pattern in ignored), excluded


# --- docker compose client ----------------------------------------------------------------


@functools.cache
def compose_client() -> list[str] | None:
    """`docker compose` (or standalone docker-compose) if a working client is installed."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        try:
            probe = subprocess.run([*argv, "version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return argv
    return None


def test_docker_compose_config_validates() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no `docker compose` client installed")
    result = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- docker-compose.yml: the `citus` profile (Citus, distributed PostgreSQL) ---------------

CITUS_NODES = ("citus-coordinator", "citus-worker1", "citus-worker2")
CITUS_SERVICES = (*CITUS_NODES, "citus-setup", "sync-citus")


def database_url_parts(url: str) -> dict[str, str]:
    match = re.fullmatch(r"postgresql://(?P<user>[^:@]+):(?P<password>.+)@(?P<host>[^:/]+)"
                         r":(?P<port>\d+)/(?P<db>\w+)", url)  # fmt: skip
    assert match, url
    return match.groupdict()


def test_citus_profile_holds_a_coordinator_two_workers_setup_and_the_service() -> None:
    in_profile = {
        name
        for name, svc in compose()["services"].items()
        if "citus" in (svc.get("profiles") or [])
    }
    assert in_profile == set(CITUS_SERVICES)
    for name in CITUS_SERVICES:
        assert service(name)["profiles"] == ["citus"], name


def test_the_default_profile_is_unchanged_by_the_citus_one() -> None:
    """`docker compose up` without --profile starts postgres and backend only."""
    default = {name for name, svc in compose()["services"].items() if not svc.get("profiles")}
    assert default == {"postgres", "backend"}


def test_citus_nodes_run_the_official_image_of_one_version() -> None:
    images = {service(name)["image"] for name in (*CITUS_NODES, "citus-setup")}
    assert len(images) == 1, images
    (image,) = images
    assert image.startswith("citusdata/citus:"), image


def test_citus_nodes_have_pg_isready_healthchecks_and_their_own_data_volumes() -> None:
    declared = set(compose().get("volumes") or {})
    sources = set()
    for name in CITUS_NODES:
        svc = service(name)
        test = healthcheck_command(svc)
        command = test[1] if test[0] == "CMD-SHELL" else shlex.join(test[1:])
        assert shlex.split(command)[0] == "pg_isready", name
        ((source, target),) = volume_mounts(svc)
        assert target == PGDATA and source in declared, name
        sources.add(source)
    assert len(sources) == len(CITUS_NODES), "each node needs a data volume of its own"


def test_citus_nodes_share_credentials_the_coordinator_uses_to_reach_the_workers() -> None:
    """Citus connects from the coordinator to each worker as a libpq client, which reads
    PGUSER and PGPASSWORD: they must be the nodes' own user and password."""
    envs = [environment(service(name)) for name in CITUS_NODES]
    assert all(env == envs[0] for env in envs)
    env = envs[0]
    assert env["PGUSER"] == env["POSTGRES_USER"]
    assert env["PGPASSWORD"] == env["POSTGRES_PASSWORD"]


def test_citus_ports_if_published_are_loopback_only_and_differ_from_postgres() -> None:
    postgres_ports = {str(p) for p in service("postgres").get("ports") or []}
    for name in CITUS_NODES:
        for port in service(name).get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), (name, port)
            assert str(port) not in postgres_ports, (name, port)


def test_citus_setup_registers_both_workers_once_every_node_is_healthy() -> None:
    setup = service("citus-setup")
    argv = [str(word) for word in setup["entrypoint"]]
    assert argv[0] == "psql" and "ON_ERROR_STOP=1" in argv
    statements = [argv[i + 1] for i, word in enumerate(argv) if word == "-c"]
    assert statements[0] == "SELECT citus_set_coordinator_host('citus-coordinator', 5432)"
    assert statements[1:] == [f"SELECT citus_add_node('{w}', 5432)" for w in CITUS_NODES[1:]]
    assert environment(setup)["PGHOST"] == "citus-coordinator"
    depends = setup["depends_on"]
    assert {name: depends[name]["condition"] for name in depends} == {
        name: "service_healthy" for name in CITUS_NODES
    }
    assert str(setup.get("restart", "no")) == "no"


def test_sync_citus_database_url_points_at_the_coordinator_as_its_user() -> None:
    parts = database_url_parts(environment(service("sync-citus"))["DATABASE_URL"])
    coordinator = environment(service("citus-coordinator"))
    assert parts["host"] == "citus-coordinator" and parts["port"] == "5432"
    assert parts["user"] == coordinator["POSTGRES_USER"]
    assert parts["password"] == coordinator["POSTGRES_PASSWORD"]
    assert parts["db"] == coordinator["POSTGRES_DB"]


def test_sync_citus_starts_after_the_workers_are_registered() -> None:
    """Its migrate at start-up distributes user_sync_data only when workers are there."""
    depends = service("sync-citus")["depends_on"]
    assert depends == {"citus-setup": {"condition": "service_completed_successfully"}}


def test_sync_citus_is_the_backend_on_other_host_ports() -> None:
    backend, citus = service("backend"), service("sync-citus")
    assert citus["build"] == backend["build"]
    assert healthcheck_command(citus) == healthcheck_command(backend)
    assert citus["stop_grace_period"] == backend["stop_grace_period"]
    env = environment(citus)
    assert set(env) <= config_env_names()
    assert {k: v for k, v in env.items() if k != "DATABASE_URL"} == {
        k: v for k, v in environment(backend).items() if k != "DATABASE_URL"
    }
    host_ports = {str(p).rsplit(":", 1)[0] for p in citus["ports"]}
    assert not host_ports & {str(p).rsplit(":", 1)[0] for p in backend["ports"]}
    assert any(str(p).endswith(f":{env['PORT']}") for p in citus["ports"])
