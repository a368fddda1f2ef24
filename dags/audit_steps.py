"""The steps of the scheduled audit, in plain Python (stdlib only, no Airflow, no slideaudit).

The DAG in `slide_audit.py` wires these into tasks. They run in the Airflow virtual environment,
which must not import slideaudit's packages (their pins differ), so the listing of an archive's
slides (`slideaudit slides`) and the audit itself (`slideaudit run`) run the `slideaudit`
executable in a subprocess and everything else reads the store's files:

    OUT/index.html, OUT/audit.csv, OUT/run.json      the archive index (rebuilt by every run);
                                                     run.json lists the slides that met --fail-on
    OUT/slides/<slide_id>/audit.json                 present once a slide was audited
    OUT/slides/<slide_id>/failure.json               present while a slide's last run failed
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

# Exit codes of `slideaudit run`: 3 some slides failed, 4 a slide met --fail-on (4 wins over 3).
EXIT_OK, EXIT_WITH_FAILURES, EXIT_THRESHOLDS = 0, 3, 4
INDEX_FILES = ("index.html", "audit.csv", "run.json")
LATEST = "latest"


class DagInputError(ValueError):
    """A DAG parameter points at something missing or malformed."""


class AuditRunError(RuntimeError):
    """`slideaudit run` crashed or refused its arguments (any exit code but 0, 3 and 4)."""


@dataclass(frozen=True)
class AuditResult:
    """What one `slideaudit run --only-new` did: its exit code, the slides it was given, the
    failure records (`failure.json` contents) of those that failed and, with exit code 4, the
    slides that met --fail-on (run.json `thresholds_met`: slide_id, verdict, verdict_reason, met)."""

    exit_code: int
    audited: list[str]
    failures: list[dict]
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
    `out`, only those without `OUT/slides/<id>/audit.json` (`--out OUT --new`: what
    `run --only-new` audits: never audited, or failed last time). DagInputError when slideaudit
    refuses the archive (its message says why)."""
    cmd = [executable(slideaudit), "slides", str(archive), "--json"]
    if out is not None:
        cmd += ["--out", str(out), "--new"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != EXIT_OK:
        raise DagInputError(f"{shlex.join(cmd)} exited with code {proc.returncode}: "
                            f"{proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)


def new_slide_ids(slideaudit: str, archive: Path, out: Path) -> list[str]:
    """Slides of the archive that `slideaudit run --only-new` audits into `out`."""
    return archive_slide_ids(slideaudit, archive, out)


def run_audit(slideaudit: str, archive: Path, model: Path, out: Path, slide_ids: list[str],
              workers: int | None = None, config: Path | None = None,
              fail_on: str | None = None) -> AuditResult:
    """Run `slideaudit run ARCHIVE --model MODEL --out OUT --only-new [--workers N]
    [--config FILE] [--fail-on CRITERIA]`, logging its output line by line. Exit 0, 3 or 4
    returns the result (3: some slides failed, 4: some met --fail-on; the index is written
    either way); any other exit code raises `AuditRunError`."""
    cmd = [executable(slideaudit), "run", str(archive), "--model", str(model), "--out", str(out), "--only-new",
           "--progress", "plain"]  # one line per slide and stage in the task log
    for option, value in (("--workers", workers), ("--config", config), ("--fail-on", fail_on)):
        if value:
            cmd += [option, str(value)]
    log.info("running %s", shlex.join(cmd))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        for line in proc.stdout:
            log.info("slideaudit: %s", line.rstrip())
    if proc.returncode not in (EXIT_OK, EXIT_WITH_FAILURES, EXIT_THRESHOLDS):
        raise AuditRunError(f"{shlex.join(cmd)} exited with code {proc.returncode}: "
                            "see its output above")
    failures = read_failures(out, slide_ids)
    for failure in failures:
        log.warning("slide %s failed at stage %s: %s", failure.get("slide_id"),
                    failure.get("stage"), failure.get("message"))
    met = (json.loads((Path(out) / "run.json").read_text(encoding="utf-8"))["thresholds_met"]
           if proc.returncode == EXIT_THRESHOLDS else [])
    for slide in met:
        log.warning("slide %s met --fail-on (%s): %s", slide["slide_id"], ", ".join(slide["met"]),
                    slide["verdict_reason"])
    return AuditResult(proc.returncode, list(slide_ids), failures, met)


def thresholds_message(result: dict) -> str | None:
    """Why the run's audit thresholds were met (a `AuditResult` as a dict), or None when not:
    one line per slide, "slide_id: VERDICT (criteria): reason"."""
    met = result.get("thresholds_met") or []
    if not met:
        return None
    lines = [f"{m['slide_id']}: {m['verdict']} ({', '.join(m['met'])}): {m['verdict_reason']}" for m in met]
    return f"audit thresholds met (--fail-on) on {len(met)} slide(s):\n" + "\n".join(lines)


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
