"""One configuration for a whole audit run, composed of the stages' own configs.

A config file (YAML or TOML) has one section per stage plus `run`; every key is optional:

    tile:    {mpp: null, patch: null, min_tissue: 0.5}   # null: the model's mpp and patch
    explain: {methods: [gradcam, hirescam], device: auto}
    stitch:  {max_side: 4096}
    audit:   {...}
    impressions: {steps: 150}     # class impressions in the reports; 0 = none
    run:     {workers: 2, fail_on: [review]}   # fail_on: the CI gate (exit 4)

CLI flags override the file as dotted keys (`explain.methods=...`). `PipelineConfig.hash()` names
what the run produces: it covers every stage setting and leaves out the runtime-only fields
(declared with `tiling.store.runtime`: where and how fast things run, never what comes out).
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from explainers.config import ExplainConfig, ImpressionConfig
from reports.audit.config import AuditConfig
from reports.audit.gate import check_fail_on
from tiling.config import StitchConfig, TileConfig
from tiling.errors import ConfigError, require
from tiling.store import config_hash, runtime


@dataclass
class RunSettings:
    """How the run is executed; none of it changes an output.

    workers: local Dask worker processes (ignored with `scheduler`);
    torch_threads: torch/OpenMP threads per worker (0 = cores // workers, at least 1);
    scheduler: address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (None = local);
    fail_on: the CI gate (`reports.audit.gate`): "review", "fail" or flag names; a slide of the run that
    meets one makes `run` exit 4 (empty = never);
    group_by: manifest columns whose values split the index's subgroup rates (`reports.audit.subgroups`).
    dashboard: HOST:PORT of the local cluster's Dask dashboard (default: this machine only, any free port);
    stage_timeout: most wall seconds one stage may take on one slide; past it that slide fails
    (`pipeline.limits`), the others go on (None = no limit).
    """

    workers: int = runtime(2)
    torch_threads: int = runtime(0)
    scheduler: str | None = runtime(None)
    fail_on: tuple[str, ...] = runtime(())
    group_by: tuple[str, ...] = runtime(())
    dashboard: str = runtime("127.0.0.1:0")
    stage_timeout: float | None = runtime(10800.0)

    def __post_init__(self) -> None:
        self.fail_on = check_fail_on(tuple(self.fail_on))
        require(self.workers >= 1, "workers", self.workers, "a whole number of processes >= 1")
        require(self.stage_timeout is None or self.stage_timeout > 0, "stage_timeout", self.stage_timeout,
                "a positive number of seconds or null (no limit)")
        require(self.torch_threads >= 0, "torch_threads", self.torch_threads, "a whole number >= 0 (0 = automatic)")


@dataclass
class PipelineConfig:
    """Every setting of `slideaudit run`: the four stages' configs, the class impressions the
    reports show (steps 0 = none) and the run settings."""

    tile: TileConfig = field(default_factory=TileConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    stitch: StitchConfig = field(default_factory=StitchConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    impressions: ImpressionConfig = field(default_factory=ImpressionConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every setting (tuples become lists)."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """config_hash of every setting that can change an output (runtime fields left out)."""
        return config_hash(self)


def _coerce(where: str, default: Any, value: Any) -> Any:
    """`value` in the type of the field's `default`; ConfigError naming `where` when it can't be."""
    if dataclasses.is_dataclass(default):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
        return _apply(default, value, where)
    if default is None or value is None:
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        if not isinstance(value, type(default)):
            raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(default, int) and not float(value).is_integer():
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    return type(default)(value)


def _example(base: Any, name: str) -> Any:
    """The value of field `name` of dataclass `base`, or for an unset (None) number field a zero
    of its declared type, so that a value given for it is coerced like any other number."""
    value = getattr(base, name)
    if value is None:
        hint = str(typing.get_type_hints(type(base))[name])
        return 0.0 if "float" in hint else 0 if "int" in hint else None
    return value


def _apply(base: Any, updates: dict[str, Any], where: str) -> Any:
    """A copy of dataclass `base` with `updates` (nested dicts for nested dataclasses)."""
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(updates) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(fields))}")
    changes = {k: _coerce(f"{where}.{k}", _example(base, k), v) for k, v in updates.items()}
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a .yaml/.yml or .toml file as a nested dict."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format; use .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections tile/explain/stitch/audit/impressions/run at the top level")
    return data


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"explain.methods": x} -> {"explain": {"methods": x}}."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None,
                defaults: dict[str, Any] | None = None) -> PipelineConfig:
    """The built-in defaults changed by `defaults` (dotted keys, e.g. a command's own), then the
    file at `path` (if any), then `overrides` (dotted keys, e.g. CLI flags)."""
    config = _apply(PipelineConfig(), nest(defaults or {}), "default")
    if path is not None:
        config = _apply(config, read_config_file(path), str(path))
    if overrides:
        config = _apply(config, nest(overrides), "option")
    return config


def parse_assignment(text: str) -> tuple[str, Any]:
    """"section.key=value" (value parsed as YAML: numbers, lists, null) -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. stitch.max_side=2048")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: cannot parse the value ({exc})") from exc
