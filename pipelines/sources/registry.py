"""The declarative source registry (config/sources.toml): what each source is and how it maps."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from foundation import settings

#: the registry's file in config/; CREDIT_SOURCES_CONFIG points a deployment at its own (an added
#: source needs no code), read when the registry is asked for, like every settings override
REGISTRY_FILE = "sources.toml"


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    id_column: str
    watermark: str
    suite: str
    critical: bool
    mapping: dict[str, Any]
    url: str | None = None
    url_env: str | None = None
    table: str | None = None
    path: str | None = None
    format: str | None = None
    encoding: str = "utf-8"
    conn_id: str | None = None
    raw_suite: str | None = None
    max_age_days: int = 7
    max_volume_drop: float = 0.5
    #: a SQL source's changed rows per extract shard (None: one shard); the registry's global
    #: ``extract_shard_rows`` unless the source sets its own
    extract_shard_rows: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def resolved_url(self, sources_dir: Path) -> str:
        """The SQLAlchemy URL: the environment override, else the Airflow connection, else the
        configured URL (credentials live in the environment or Airflow, never in the registry)."""
        if self.url_env and os.environ.get(self.url_env):
            return os.environ[self.url_env]
        if self.conn_id:
            return connection_url(self.conn_id)
        if not self.url:
            raise ValueError(f"source '{self.name}' has kind 'sql' but no url")
        return self.url.replace("{sources_dir}", str(sources_dir))

    def file_path(self, sources_dir: Path) -> Path:
        if not self.path:
            raise ValueError(f"source '{self.name}' has kind 'file' but no path")
        return sources_dir / self.path


_AIRFLOW_SCHEMES = {
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "sqlite": "sqlite",
}


def connection_url(conn_id: str) -> str:
    """An Airflow connection as a SQLAlchemy URL: ``AIRFLOW_CONN_<ID>`` from the environment (URI
    form), else Airflow's own lookup (secrets backends, the metadata database) at run time."""
    uri = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not uri:
        try:
            from airflow.sdk import Connection
        except ImportError as exc:  # pragma: no cover - Airflow is a dependency
            raise ValueError(f"connection '{conn_id}' is not set (AIRFLOW_CONN_{conn_id.upper()})") from exc
        try:
            uri = Connection.get(conn_id).get_uri()
        except Exception as exc:  # noqa: BLE001 - Airflow raises several lookup errors
            raise ValueError(f"Airflow connection '{conn_id}' cannot be read: {exc}") from exc
    scheme, sep, rest = uri.partition("://")
    return f"{_AIRFLOW_SCHEMES.get(scheme, scheme)}{sep}{rest}"


def load_sources(config_path: Path | None = None) -> dict[str, SourceConfig]:
    """The source registry: ``config_path``, else the one the settings resolve (config/sources.toml
    or CREDIT_SOURCES_CONFIG's), read and checked once per file."""
    return _read_registry(Path(config_path) if config_path else settings.config_path(REGISTRY_FILE))


@cache
def _read_registry(config_path: Path) -> dict[str, SourceConfig]:
    raw = tomllib.loads(config_path.read_text("utf-8"))
    sources: dict[str, SourceConfig] = {}
    for name, spec in raw.get("sources", {}).items():
        spec = dict(spec)
        spec.setdefault("extract_shard_rows", raw.get("extract_shard_rows"))
        shard_rows = spec["extract_shard_rows"]
        if shard_rows is not None and (not isinstance(shard_rows, int) or shard_rows < 1):
            raise ValueError(
                f"source '{name}' in {config_path}: extract_shard_rows must be a positive whole number, "
                f"not {shard_rows!r}"
            )
        kind = spec.pop("kind")
        if kind not in ("sql", "file"):
            raise ValueError(f"source '{name}' in {config_path}: kind must be 'sql' or 'file', not {kind!r}")
        known = {f for f in SourceConfig.__dataclass_fields__ if f not in ("name", "kind", "options")}
        options = {k: spec.pop(k) for k in list(spec) if k not in known}
        for required in ("id_column", "watermark", "suite", "mapping"):
            if required not in spec:
                raise ValueError(f"source '{name}' in {config_path} lacks '{required}'")
        sources[name] = SourceConfig(
            name=name, kind=kind, critical=bool(spec.pop("critical", False)), options=options, **spec
        )
    return sources


def source_names(config_path: Path | None = None) -> list[str]:
    return list(load_sources(config_path))
