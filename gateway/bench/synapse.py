"""Synapse, the reference homeserver, as a benchmark's anchor: installed, configured, started.

Synapse is installed by :mod:`lowband.sim.synapse` from PyPI into its own
cache venv (``~/.cache/lowband/synapse-venv``, or ``$LOWBAND_SYNAPSE_VENV``)
on first use and is never a dependency of the project. Its generated config is
edited for loopback, SQLite, open registration and no rate limits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lowband.gateway.bench.processes import BenchError, ServerProcess, progress
from lowband.sim.ports import free_port
from lowband.sim.synapse import SynapseError, run_setup
from lowband.sim.synapse import ensure_synapse as sim_ensure_synapse

SERVER_NAME = "localhost"


def _limit(per_second: float = 100_000, burst: int = 100_000) -> dict[str, float]:
    return {"per_second": per_second, "burst_count": burst}


def synapse_rate_limits() -> dict[str, Any]:
    """Every client-side Synapse rate limit raised far above what the load reaches."""
    return {
        "rc_message": _limit(),
        "rc_registration": _limit(),
        "rc_room_creation": _limit(),
        "rc_login": {"address": _limit(), "account": _limit(), "failed_attempts": _limit()},
        "rc_joins": {"local": _limit(), "remote": _limit()},
        "rc_joins_per_room": _limit(),
        "rc_invites": {"per_room": _limit(), "per_user": _limit(), "per_issuer": _limit()},
        "rc_presence": {"per_user": _limit()},
        "rc_3pid_validation": _limit(),
        "rc_delayed_event_mgmt": _limit(),
        "rc_user_directory": _limit(),
        "rc_reports": _limit(),
        "rc_media_create": _limit(),
    }


def configure_synapse(
    config: dict[str, Any], *, port: int, data_dir: str, app_service_config_files: list[str] | None = None,
    database: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Synapse's generated config edited for the benchmark; ``config`` is left as it was.

    One plain-HTTP client listener on 127.0.0.1:``port`` (no federation),
    SQLite and media under ``data_dir``, open registration without
    verification, no key servers, no stats, rate limits out of the way, and
    the bridges' registration files ``app_service_config_files`` when given.
    ``database`` (a ``database`` section: PostgreSQL, ``bench/postgres.py``)
    replaces the SQLite file. Everything else keeps Synapse's generated defaults.
    """
    edited = dict(config)
    edited["listeners"] = [
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }
    ]
    edited["database"] = database or {"name": "sqlite3", "args": {"database": f"{data_dir}/homeserver.db"}}
    edited["media_store_path"] = f"{data_dir}/media_store"
    edited["pid_file"] = f"{data_dir}/homeserver.pid"
    edited["enable_registration"] = True
    edited["enable_registration_without_verification"] = True
    edited["trusted_key_servers"] = []
    edited["suppress_key_server_warning"] = True
    edited["report_stats"] = False
    edited.update(synapse_rate_limits())
    if app_service_config_files:
        edited["app_service_config_files"] = list(app_service_config_files)
    return edited


def _run_tool(argv: list[str], what: str, timeout: float, cwd: Path | None = None) -> str:
    """Run a setup command; its stdout, BenchError with its last line when it fails."""
    try:
        return run_setup(argv, what, timeout, cwd=cwd)
    except SynapseError as exc:
        raise BenchError(str(exc)) from exc


def ensure_synapse() -> Path:
    """The Python of a venv with matrix-synapse in it (installed on first use); BenchError when pip fails."""
    try:
        return sim_ensure_synapse(lambda message: progress("synapse", message))
    except SynapseError as exc:
        raise BenchError(str(exc)) from exc


def ensure_psycopg2(python: Path) -> None:
    """Synapse's PostgreSQL driver in its venv, installed from PyPI (``psycopg2-binary``) on first use."""
    try:
        run_setup([str(python), "-c", "import psycopg2"], "importing psycopg2", 60)
        return
    except SynapseError:
        progress("synapse", "installing psycopg2-binary from PyPI into Synapse's venv (once)")
    _run_tool([str(python), "-m", "pip", "install", "--progress-bar", "off", "psycopg2-binary"],
              "pip install psycopg2-binary (Synapse's PostgreSQL driver)", 600)


def prepare_synapse(workdir: Path, app_service_config_files: list[str] | None = None,
                    database: dict[str, Any] | None = None) -> ServerProcess:
    """Synapse with a generated, then edited, config in ``workdir`` (and these bridges registered; on ``database``,
    a config section, instead of SQLite: PostgreSQL needs psycopg2 in Synapse's venv, BenchError without it)."""
    python = ensure_synapse()
    version = _run_tool([str(python), "-c", "import synapse; print(synapse.__version__)"], "reading Synapse's version", 120).strip()
    port = free_port()
    config_path = workdir / "homeserver.yaml"
    _run_tool(
        [
            str(python), "-m", "synapse.app.homeserver",
            "--server-name", SERVER_NAME,
            "--config-path", str(config_path),
            "--data-directory", str(workdir),
            "--generate-config", "--report-stats=no",
        ],
        # Synapse puts its log file in the working directory of this step.
        "generating the Synapse config", 120, cwd=workdir,
    )  # fmt: skip
    # The project has no YAML library; Synapse's venv has one, and JSON is YAML.
    as_json = _run_tool(
        [str(python), "-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)", str(config_path)],
        "reading the generated Synapse config", 60,
    )  # fmt: skip
    if database is not None and database.get("name") == "psycopg2":
        ensure_psycopg2(python)
    config = configure_synapse(
        json.loads(as_json), port=port, data_dir=str(workdir), app_service_config_files=app_service_config_files,
        database=database,
    )
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    argv = [str(python), "-m", "synapse.app.homeserver", "-c", str(config_path)]
    return ServerProcess("synapse", argv, workdir, workdir / "synapse.stdout.log", version, port)
