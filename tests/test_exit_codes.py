"""One exit-code table (`pipeline.errors.EXIT_CODES`, `ERRNO_CODES`): every error class in it, each
code reached through a real command; the same problem gives the same code from every command."""
from __future__ import annotations

import errno
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import explainers.errors
import pipeline.errors
import reports.errors
import tiling.errors
import tiling.samples.archives
from conftest import manifest_rows
from pipeline.cli import main
from pipeline.errors import ERRNO_CODES, EXIT_CODES, EXIT_CRASH, EXIT_SLIDES_FAILED, EXIT_USAGE, exit_code

ERROR_MODULES = (tiling.errors, explainers.errors, reports.errors, pipeline.errors)


def test_every_error_class_of_the_four_packages_is_in_the_table() -> None:
    classes = {obj for module in ERROR_MODULES for _, obj in inspect.getmembers(module, inspect.isclass)
               if issubclass(obj, tiling.errors.AuditError)}
    assert classes and classes <= set(EXIT_CODES), sorted(c.__name__ for c in classes - set(EXIT_CODES))
    assert set(EXIT_CODES.values()) == {EXIT_USAGE, EXIT_SLIDES_FAILED}


def raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(tiling.samples.archives, "write_sample_archive", fail)


@pytest.mark.parametrize("error", list(EXIT_CODES), ids=lambda c: c.__name__)
def test_each_class_exits_with_its_code_and_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    error: type[Exception]) -> None:
    raising(monkeypatch, error(f"{tmp_path}/x: what went wrong; what to do"))
    result = CliRunner().invoke(main, ["sample", str(tmp_path)])
    assert result.exit_code == EXIT_CODES[error] == exit_code(error("m"))
    assert f"{tmp_path}/x: what went wrong; what to do" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("number", list(ERRNO_CODES), ids=errno.errorcode.get)
def test_each_errno_exits_with_its_code_naming_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       number: int) -> None:
    cause = OSError(number, "the system's words", str(tmp_path / "out" / "x.json"))
    try:
        raise ValueError("wrapped") from cause
    except ValueError as wrapped:
        raising(monkeypatch, wrapped)
    result = CliRunner().invoke(main, ["sample", str(tmp_path)])
    assert result.exit_code == ERRNO_CODES[number]
    assert f"{tmp_path / 'out' / 'x.json'}: the system's words;" in result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output
    assert exit_code(OSError(errno.ENOENT, "no such file")) == EXIT_CRASH  # not in the table: a crash


def test_a_read_only_out_exits_2_naming_the_path(sample_archive: Path, model_dir: Path, tmp_path: Path) -> None:
    """A real read-only file system (a tmpfs mounted ro in a private mount namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("no mount namespace here (unshare -rm failed): cannot mount a read-only tmpfs")
    out = tmp_path / "out"
    out.mkdir()
    slideaudit = Path(sys.executable).parent / "slideaudit"
    script = (f"mount -t tmpfs -o ro tmpfs {out} || exit 99\n"
              f"{slideaudit} sample {out}/archive; echo $? > {tmp_path}/sample.rc\n"
              f"{slideaudit} run {sample_archive} --model {model_dir} --out {out}/run; echo $? > {tmp_path}/run.rc\n")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for command, path in (("sample", out / "archive"), ("run", out / "run")):
        assert (tmp_path / f"{command}.rc").read_text().strip() == str(EXIT_USAGE), done.stderr
        assert f"Error: {path}: Read-only file system; choose another --out" in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("mpp", ["1000", "nan", "0.001", "-1"])
def test_an_implausible_slide_mpp_exits_2_from_every_command(sample_archive: Path, model_dir: Path,
                                                            tmp_path: Path, mpp: str) -> None:
    slide = manifest_rows(sample_archive)[0]["path"]
    for args in (["tile", slide, "--out", str(tmp_path / "t")],
                 ["run", str(sample_archive), "--model", str(model_dir), "--out", str(tmp_path / "r")]):
        result = CliRunner().invoke(main, [*args, "--slide-mpp", mpp])
        assert result.exit_code == EXIT_USAGE, (args[0], result.output)
        assert "slide_mpp" in result.output and "0.05-20" in result.output
    assert not (tmp_path / "t").exists() and not (tmp_path / "r").exists()


def test_an_implausible_manifest_mpp_exits_2_naming_the_line(sample_archive: Path, model_dir: Path,
                                                             tmp_path: Path) -> None:
    rows = manifest_rows(sample_archive)[:1]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_id,path,label,mpp\n{rows[0]['slide_id']},{rows[0]['path']},{rows[0]['label']},1000\n")
    result = CliRunner().invoke(main, ["run", str(manifest), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == EXIT_USAGE and f"{manifest} line 2: `mpp` 1000" in result.output


def test_a_broken_model_exits_2_from_explain_and_from_run(sample_archive: Path, model_dir: Path,
                                                          tile_sample, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "classes": ["only one"]}))
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    slide_dir = tmp_path / "slides" / "s"
    shutil.copytree(tile_sample(0).parent, slide_dir)
    explained = CliRunner().invoke(main, ["explain", str(slide_dir), "--model", str(broken)])
    ran = CliRunner().invoke(main, ["run", str(sample_archive), "--model", str(broken), "--out", str(tmp_path / "o")])
    assert explained.exit_code == ran.exit_code == EXIT_USAGE, (explained.output, ran.output)
    assert str(broken) in explained.output and str(broken) in ran.output
