"""How ``credit serve`` runs: settings, worker processes and the HTTP protocol they speak.

The parent process reads the settings (``config/service.toml``, a deployment's file over it, then
command-line overrides), makes the shared rate-limit table, writes both to a private state folder
and hands its path to uvicorn's worker processes in ``CREDIT_SERVE_STATE``; each worker builds
the app from there (``worker_app``) and speaks ``GuardedH11Protocol``. See docs/serving.md.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from foundation.settings import config_path

#: the service's settings file in config/ (CREDIT_SERVICE_CONFIG points a deployment at its own)
SERVICE_FILE = "service.toml"
STATE_ENV = "CREDIT_SERVE_STATE"


def load_settings(
    path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The repository's ``config/service.toml`` (or CREDIT_SERVICE_CONFIG's, resolved at call time)
    with a deployment's file and then ``overrides`` laid over it, key by key within each table:
    every setting has one default, in that file."""
    merged = tomllib.loads(config_path(SERVICE_FILE).read_text("utf-8"))
    layers = [tomllib.loads(path.read_text("utf-8")) if path else {}, overrides or {}]
    for layer in layers:
        for section, values in layer.items():
            if isinstance(values, dict):
                merged.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
            else:
                merged[section] = values
    return merged


@functools.cache
def worker_settings() -> dict[str, Any]:
    """``{"lake": ..., "config": ...}`` as the parent process wrote them for its workers."""
    state = os.environ.get(STATE_ENV)
    if not state:
        raise RuntimeError(f"{STATE_ENV} is not set: workers are started by `credit serve`")
    return json.loads((Path(state) / "settings.json").read_text("utf-8"))


def worker_app() -> Any:
    """The app factory uvicorn calls in each worker process."""
    from serving.app import create_app
    from serving.guard import InFlightCap

    settings = worker_settings()
    config = settings["config"]
    return InFlightCap(
        create_app(Path(settings["lake"]), config), int(config["limits"]["requests_in_flight_per_client"])
    )


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def preflight(lake: Path, config: dict[str, Any]) -> None:
    """Refuse to start on a damaged token file or audit trail, before any worker is spawned: a worker
    that fails at start-up is only restarted by the supervisor, and nobody would be told why."""
    from serving.app import audit_settings
    from serving.audit import AuditLog
    from serving.tokens import TokenBook

    TokenBook(lake)  # raises TokensDamaged naming the file and the problem
    AuditLog(lake, audit_settings(config))  # raises AuditDamaged likewise


def serve(lake: Path, config: dict[str, Any], host: str, port: int, log_level: str, access_log: bool) -> None:
    """Run the service until it is stopped (SIGINT/SIGTERM); returns when all workers are down."""
    import uvicorn

    from serving.limits import BucketTable

    server, limits = config["server"], config["limits"]
    # uvicorn shuts down gracefully on SIGTERM and then raises it again; without a handler that
    # would end the process on the spot, leaving the state folder behind
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with tempfile.TemporaryDirectory(prefix="credit-serve-") as state:
        config["rate_limit"]["shared_table"] = str(
            BucketTable.create(Path(state) / "buckets", int(config["rate_limit"]["clients_tracked"]))
        )
        (Path(state) / "settings.json").write_text(json.dumps({"lake": str(lake), "config": config}), "utf-8")
        os.environ[STATE_ENV] = state
        uvicorn.run(
            "serving.server:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=int(server["workers"]),
            http="serving.guard:GuardedH11Protocol",
            h11_max_incomplete_event_size=int(limits["max_header_bytes"]),
            limit_concurrency=int(server["limit_concurrency"]),
            backlog=int(server["backlog"]),
            timeout_keep_alive=int(server["keep_alive_seconds"]),
            timeout_worker_healthcheck=int(server["worker_healthcheck_seconds"]),
            proxy_headers=bool(server["trusted_proxies"]),
            forwarded_allow_ips=list(server["trusted_proxies"]),
            log_level=log_level,
            access_log=access_log,
        )
