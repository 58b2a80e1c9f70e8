"""The declarative source registry (config/sources.toml): what each source is and how it maps."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.lake import REPO_ROOT

# CREDIT_SOURCES_CONFIG points a deployment at its own registry (an added source needs no code).
DEFAULT_CONFIG = Path(os.environ.get("CREDIT_SOURCES_CONFIG") or REPO_ROOT / "config" / "sources.toml")


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
    options: dict[str, Any] = field(default_factory=dict)

    def resolved_url(self, sources_dir: Path) -> str:
        """The SQLAlchemy URL: the environment override if set, else the configured one."""
        if self.url_env and os.environ.get(self.url_env):
            return os.environ[self.url_env]
        if not self.url:
            raise ValueError(f"source '{self.name}' has kind 'sql' but no url")
        return self.url.replace("{sources_dir}", str(sources_dir))

    def file_path(self, sources_dir: Path) -> Path:
        if not self.path:
            raise ValueError(f"source '{self.name}' has kind 'file' but no path")
        return sources_dir / self.path


@cache
def load_sources(config_path: Path = DEFAULT_CONFIG) -> dict[str, SourceConfig]:
    """Read and check the registry once per process."""
    raw = tomllib.loads(Path(config_path).read_text("utf-8"))
    sources: dict[str, SourceConfig] = {}
    for name, spec in raw.get("sources", {}).items():
        spec = dict(spec)
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


def source_names(config_path: Path = DEFAULT_CONFIG) -> list[str]:
    return list(load_sources(config_path))
