"""One config for the whole run: YAML or TOML, flags override, a hash of what changes outputs."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from explainers.config import ExplainConfig
from pipeline.config import ConfigError, PipelineConfig, RunSettings, load_config, parse_assignment
from reports.audit.config import AuditConfig
from tiling.config import StitchConfig, TileConfig
from tiling.store import config_hash

YAML = """
tile: {mpp: 2, patch: 128}
explain: {methods: [gradcam, hirescam]}
stitch: {max_side: 2048}
run: {workers: 1}
"""
TOML = """
[tile]
mpp = 2.0
patch = 128
[explain]
methods = ["gradcam", "hirescam"]
[stitch]
max_side = 2048
[run]
workers = 1
"""


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(YAML)
    (tmp_path / "c.toml").write_text(TOML)
    from_yaml, from_toml = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.toml")
    assert from_yaml == from_toml
    assert from_yaml.tile.mpp == 2.0 and isinstance(from_yaml.tile.mpp, float)
    assert from_yaml.tile.patch == 128
    assert from_yaml.explain.methods == ("gradcam", "hirescam")
    assert from_yaml.stitch.max_side == 2048 and from_yaml.run.workers == 1
    # untouched settings keep their defaults
    assert from_yaml.tile.min_tissue == PipelineConfig().tile.min_tissue


def test_flags_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.yml").write_text(YAML)
    config = load_config(tmp_path / "c.yml", {"explain.methods": "cam,gradcampp",
                                              "stitch.max_side": 1024, "run.workers": 3})
    assert config.explain.methods == ("cam", "gradcampp")
    assert config.stitch.max_side == 1024 and config.run.workers == 3
    assert config.tile.patch == 128


def test_hash_follows_outputs_not_runtime() -> None:
    base = load_config()
    assert base.hash() == PipelineConfig().hash()
    for runtime in ({"explain.device": "cpu"}, {"explain.batch": 8}, {"tile.chunk": 16},
                    {"stitch.block_pixels": 1024}, {"stitch.chunk": 256}, {"run.workers": 7},
                    {"run.scheduler": "tcp://x:1"}):
        assert load_config(overrides=runtime).hash() == base.hash(), runtime
    for setting in ({"tile.min_tissue": 0.25}, {"stitch.max_side": 999},
                    {"explain.methods": ("gradcam", "cam")}):
        assert load_config(overrides=setting).hash() != base.hash(), setting


def test_runtime_fields_are_declared_once_and_stamps_leave_them_out() -> None:
    runtime = {name: [f.name for f in dataclasses.fields(cls) if f.metadata.get("runtime")]
               for name, cls in (("tile", TileConfig), ("explain", ExplainConfig), ("stitch", StitchConfig),
                                 ("audit", AuditConfig), ("run", RunSettings))}
    assert runtime == {"tile": ["chunk"], "explain": ["device", "batch"],
                       "stitch": ["max_vertices", "chunk", "block_pixels"],
                       "audit": [], "run": ["workers", "torch_threads", "scheduler", "fail_on", "group_by",
                                            "dashboard", "stage_timeout"]}
    assert config_hash(ExplainConfig(batch=8, device="cpu")) == config_hash(ExplainConfig())
    assert config_hash(ExplainConfig()) == config_hash({"methods": ["gradcam"], "target": "slide",
                                                        "target_class": None, "autocast": False})
    assert config_hash(ExplainConfig(target="instance")) != config_hash(ExplainConfig())


@pytest.mark.parametrize(("text", "problem"), [
    ("tiles: {mpp: 1}", r"unknown setting\(s\) tiles"),
    ("tile: {mpp: 0}", r"tile: mpp = 0.0: must be a positive number of µm/px"),
    ("tile: {min_tissue: 1.5}", r"tile: min_tissue = 1.5: must be a fraction in \[0, 1\]"),
    ("explain: {target: pixel}", "explain: target = 'pixel': must be one of slide, instance"),
    ("explain: {device: tpu}", "explain: device = 'tpu': must be one of auto, cpu, cuda"),
    ("stitch: {max_side: 0}", "stitch: max_side = 0: must be a whole number of px >= 1"),
    ("audit: {min_auroc: 2}", r"audit: min_auroc = 2.0: must be an AUROC in \[0, 1\]"),
    ("run: {workers: 0}", "run: workers = 0: must be a whole number of processes >= 1"),
    ("tile: {mpp: 1, size: 3}", r"tile: unknown setting\(s\) size; valid: .*patch"),
    ("tile: {patch: big}", r"tile\.patch: expected a number"),
    ("tile: {patch: 2.5}", r"tile\.patch: expected a whole number"),
    ("explain: {methods: 3}", r"explain\.methods: expected a list"),
    ("stitch: 5", "stitch: expected a table"),
    ("- tile", "expected sections"),
    ("tile: {mpp: [1", "not valid YAML"),
])
def test_bad_config_names_file_and_setting(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "c.ini").write_text("[tile]\n")
    with pytest.raises(ConfigError, match=re.escape("use .yaml, .yml or .toml")):
        load_config(tmp_path / "c.ini")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_parse_assignment() -> None:
    assert parse_assignment("stitch.max_side=2048") == ("stitch.max_side", 2048)
    assert parse_assignment("explain.methods=[cam, gradcam]") == ("explain.methods", ["cam", "gradcam"])
    assert parse_assignment("tile.slide_mpp=null") == ("tile.slide_mpp", None)
    with pytest.raises(ConfigError, match=r"SECTION\.KEY=VALUE"):
        parse_assignment("max_side=5")


def test_run_tiles_at_the_model_footprint_unless_tile_is_set(tmp_path: Path) -> None:
    from pipeline.runner import at_model_footprint

    assert TileConfig().mpp is None and TileConfig().target == (1.0, 224)
    config = at_model_footprint(load_config(), 3.5, 64).tile
    assert (config.mpp, config.patch) == (3.5, 64)
    config = at_model_footprint(load_config(overrides={"tile.mpp": 2}), 3.5, 64).tile
    assert (config.mpp, config.patch) == (2.0, 64) and isinstance(config.mpp, float)
    path = tmp_path / "c.yaml"
    path.write_text("tile: {patch: 128}\n")
    config = at_model_footprint(load_config(path), 0.5, 224).tile
    assert (config.mpp, config.patch) == (0.5, 128)
