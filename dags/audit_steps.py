"""The steps of the scheduled audit, in plain Python (stdlib only, no Airflow, no slideaudit).

The DAG in `slide_audit.py` wires these into tasks. They run in the Airflow virtual environment,
which must not import slideaudit's packages (their pins differ), so listing an archive's slides
(`slideaudit slides`), auditing one slide (`slideaudit run` on a one-slide archive) and building
the index (`slideaudit report`) run the `slideaudit` executable in a subprocess; everything else
reads the store's files:

    OUT/index.html, OUT/audit.csv                    the archive index (`slideaudit report OUT`)
    OUT/slides/<slide_id>/audit.json                 present once a slide was audited
    OUT/slides/<slide_id>/failure.json               present while a slide's last run failed
"""
from __future__ import annotations

import collections
import csv
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

# Exit codes of `slideaudit run`: 2 a setting to fix, 3 the slide failed, 4 it met --fail-on.
EXIT_OK, EXIT_USAGE, EXIT_WITH_FAILURES, EXIT_THRESHOLDS = 0, 2, 3, 4
PREFLIGHT = "preflight"  # the stage that checks a slide's inputs before any work
INDEX_FILES = ("index.html", "audit.csv", "run.json")
LATEST = "latest"
# Manifest columns holding numbers, not files, among the `annotation*` ones (tiling/archive.py).
NUMBER_COLUMNS = ("annotation_downsample", "annotation_mpp")


class DagInputError(ValueError):
    """A DAG parameter or a setting points at something missing or malformed."""


class AuditRunError(RuntimeError):
    """`slideaudit` crashed (exit code 1, or killed): retrying may help."""


class SlideFailed(RuntimeError):
    """`slideaudit run` could not audit the slide (exit code 3); `stage` is where it failed
    (failure.json). A failure at preflight is bad input (fix the file): retrying cannot help."""

    def __init__(self, slide_id: str, stage: str, message: str) -> None:
        super().__init__(f"slide {slide_id} failed at stage {stage}: {message}")
        self.slide_id, self.stage = slide_id, stage


@dataclass(frozen=True)
class SlideResult:
    """An audited slide: `slideaudit run`'s exit code (0, or 4 when it met --fail-on), its
    verdict (PASS, REVIEW, FAIL, UNCHECKED) and the --fail-on criteria it met (run's
    `thresholds_met`: slide_id, verdict, verdict_reason, met)."""

    slide_id: str
    exit_code: int
    verdict: str | None
    thresholds_met: list[dict]


def executable(slideaudit: str) -> str:
    """The path of the `slideaudit` executable named by the DAG's `slideaudit_bin` param."""
    exe = shutil.which(slideaudit)
    if exe is None:
        raise DagInputError(f"slideaudit executable {slideaudit!r} not found: set the DAG's "
                            "`slideaudit_bin` param or $SLIDEAUDIT_BIN to its path")
    return exe


def archive_slide_ids(slideaudit: str, archive: Path, out: Path | None = None) -> list[str]:
    """Slide ids of an archive as slideaudit reads it (`slideaudit slides ARCHIVE --json`); with
    `out`, only those without `OUT/slides/<id>/audit.json` (`--out OUT --new`: never audited, or
    failed last time). DagInputError when slideaudit refuses the archive (its message says why)."""
    cmd = [executable(slideaudit), "slides", str(archive), "--json"]
    if out is not None:
        cmd += ["--out", str(out), "--new"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != EXIT_OK:
        raise DagInputError(f"{shlex.join(cmd)} exited with code {proc.returncode}: "
                            f"{proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)


def new_slide_ids(slideaudit: str, archive: Path, out: Path) -> list[str]:
    """Slides of the archive not audited into `out` yet (never, or failed last time)."""
    return archive_slide_ids(slideaudit, archive, out)


def one_slide_archive(archive: Path, slide_id: str, folder: Path) -> Path:
    """An archive in `folder` holding only `slide_id` of `archive`, read as slideaudit reads the
    whole one: for a folder archive, `folder` with links to the files named `<slide_id>.*` (the
    slide and its annotations); for a manifest, `folder/manifest.csv` with the header and that
    slide's row, its relative paths (`path`, `annotation*` but NUMBER_COLUMNS) made absolute.
    Nothing in `archive` is written. DagInputError when the slide is not in it."""
    archive = Path(archive).absolute()
    if archive.is_dir():
        files = [p for p in archive.iterdir() if p.stem == slide_id]
        for path in files:
            (folder / path.name).symlink_to(path)
        if files:
            return folder
    else:
        with open(archive, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if (r.get("slide_id") or Path(r.get("path") or "").stem) == slide_id]
        if rows:
            row = {k: (str(archive.parent / v) if v and (k == "path" or k.startswith("annotation"))
                       and k not in NUMBER_COLUMNS else v) for k, v in rows[0].items()}
            subset = folder / "manifest.csv"
            with open(subset, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=reader.fieldnames or list(row))
                writer.writeheader()
                writer.writerow(row)
            return subset
    raise DagInputError(f"{archive}: no slide {slide_id!r} in the archive (was it removed since it was listed?)")


def _run_logged(cmd: list[str]) -> tuple[int, str, str]:
    """Run `cmd`, logging its stderr line by line; (exit code, stdout, last stderr lines). The
    process is terminated (SIGTERM: slideaudit stops cleanly) when this task is interrupted,
    e.g. by Airflow's execution_timeout."""
    log.info("running %s", shlex.join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=5)
    with tempfile.TemporaryFile("w+") as stdout, subprocess.Popen(
            cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            for line in proc.stderr:
                log.info("slideaudit: %s", line.rstrip())
                tail.append(line.rstrip())
            proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        stdout.seek(0)
        return proc.returncode, stdout.read(), "\n".join(tail)


def run_slide(slideaudit: str, archive: Path, slide_id: str, model: Path, out: Path,
              workers: int | None = None, config: Path | None = None,
              fail_on: str | None = None) -> SlideResult:
    """Audit one slide of `archive` into `out`: `slideaudit run ONE_SLIDE_ARCHIVE --model MODEL
    --out OUT --wait --json [--workers N] [--config FILE] [--fail-on CRITERIA]`, the one-slide
    archive from `one_slide_archive` in a temporary folder. `--wait`: runs on the same OUT take
    turns (a run holds OUT/.lock). Exit 0 or 4 returns the result; 3 raises SlideFailed, 2
    DagInputError (a setting to fix), any other AuditRunError."""
    with tempfile.TemporaryDirectory(prefix=f"slideaudit-{slide_id}-") as folder:
        subset = one_slide_archive(archive, slide_id, Path(folder))
        cmd = [executable(slideaudit), "run", str(subset), "--model", str(model), "--out", str(out), "--wait",
               "--json", "--progress", "plain"]  # one line per stage in the task log
        for option, value in (("--workers", workers), ("--config", config), ("--fail-on", fail_on)):
            if value:
                cmd += [option, str(value)]
        code, stdout, tail = _run_logged(cmd)
    if code == EXIT_USAGE:
        raise DagInputError(f"{shlex.join(cmd)} exited with code 2 (a setting to fix): {tail}")
    if code not in (EXIT_OK, EXIT_WITH_FAILURES, EXIT_THRESHOLDS):
        raise AuditRunError(f"{shlex.join(cmd)} exited with code {code}: see its output above")
    summary = json.loads(stdout)
    if summary["failures"]:
        failure = summary["failures"][0]
        raise SlideFailed(slide_id, failure["stage"], failure["message"])
    for slide in summary["thresholds_met"]:
        log.warning("slide %s met --fail-on (%s): %s", slide["slide_id"], ", ".join(slide["met"]),
                    slide["verdict_reason"])
    return SlideResult(slide_id, code, next(iter(summary["verdicts"]), None), summary["thresholds_met"])


def build_index(slideaudit: str, out: Path) -> None:
    """`slideaudit report OUT --group-by ''`: OUT/index.html and OUT/audit.csv over every slide
    of the store, failed ones included. Without subgroups: the runs' archives held one slide."""
    cmd = [executable(slideaudit), "report", str(out), "--group-by", ""]
    code, _, tail = _run_logged(cmd)
    if code != EXIT_OK:
        raise AuditRunError(f"{shlex.join(cmd)} exited with code {code}: {tail}")


def outcome_message(slide_ids: list[str], results: list[dict], out: Path) -> str | None:
    """Why the DAG run must be marked failed, or None: the slides that were not audited (their
    failure.json stage and message, when they have one) and those that met --fail-on
    (`SlideResult`s as dicts), one line each."""
    audited = {r["slide_id"] for r in results}
    failures = {f["slide_id"]: f for f in read_failures(out, [s for s in slide_ids if s not in audited])}
    lines = [f"{s}: not audited: " + (f"failed at stage {failures[s].get('stage')}: {failures[s].get('message')}"
                                      if s in failures else "no failure.json (see its task's log)")
             for s in slide_ids if s not in audited]
    lines += [f"{m['slide_id']}: {m['verdict']} met --fail-on ({', '.join(m['met'])}): {m['verdict_reason']}"
              for r in results for m in r["thresholds_met"]]
    return "\n".join(lines) or None


def read_failures(out: Path, slide_ids: list[str]) -> list[dict]:
    """The `failure.json` records of those slides that have one."""
    paths = [Path(out) / "slides" / s / "failure.json" for s in slide_ids]
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths if p.is_file()]


def _digest(folder: Path) -> str:
    """sha256 over the index files of a store or snapshot (missing files count as empty)."""
    h = hashlib.sha256()
    for name in INDEX_FILES:
        path = folder / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return h.hexdigest()


def _ignore_store(_folder: str, names: list[str]) -> set[str]:
    """Leave out the zarr stores (bulky intermediates) and hidden/temporary names."""
    return {n for n in names if n.endswith(".zarr") or n.startswith(".")}


def _copy_reports(out: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in INDEX_FILES:
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    slides = out / "slides"
    for slide in sorted(slides.iterdir()) if slides.is_dir() else []:
        if slide.is_dir() and not slide.name.startswith("."):
            shutil.copytree(slide, dest / "slides" / slide.name, ignore=_ignore_store)


def snapshots(publish_dir: Path) -> list[Path]:
    """Published snapshots, oldest first (their names are UTC timestamps)."""
    return sorted(p for p in Path(publish_dir).iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def publish(out: Path, publish_dir: Path, keep: int = 7, now: datetime | None = None) -> Path:
    """Publish the store's reports as `publish_dir/<UTC timestamp>/` and point
    `publish_dir/latest` at it; return the snapshot.

    A snapshot holds index.html, audit.csv, run.json and `slides/<id>/` (report.html,
    audit.json, failure.json, report assets) without the zarr stores, so the index's relative
    links work. It is built under a hidden temporary name and renamed when complete, and
    `latest` is a relative symlink replaced atomically, so readers never see a half copy.
    Nothing is written when `latest` already shows the same index files. The newest `keep`
    snapshots are kept, older ones removed.
    """
    out, publish_dir = Path(out), Path(publish_dir)
    if keep < 1:
        raise DagInputError(f"keep={keep}: the DAG's `keep` param must be at least 1")
    if not (out / "index.html").is_file():
        raise DagInputError(f"{out / 'index.html'} does not exist: nothing to publish "
                            "(run the audit first)")
    latest = publish_dir / LATEST
    if latest.is_dir() and _digest(latest) == _digest(out):
        log.info("%s is already published as %s", out / "index.html", latest.resolve())
        return latest.resolve()
    publish_dir.mkdir(parents=True, exist_ok=True)
    name = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H%M%SZ")
    if (publish_dir / name).exists():
        name = f"{name}-{uuid.uuid4().hex[:6]}"
    tmp = publish_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _copy_reports(out, tmp)
        tmp.rename(publish_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    link = publish_dir / f".{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(name, link)
    os.replace(link, latest)
    for old in snapshots(publish_dir)[:-keep]:
        shutil.rmtree(old)
    log.info("published %s (open %s)", publish_dir / name, latest / "index.html")
    return publish_dir / name
