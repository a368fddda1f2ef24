"""`slideaudit serve` as a real subprocess on a free loopback port, and headless Chromium for it."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 120


def chromium() -> str:
    """The system Chromium's path; fails the test clearly when it is missing."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is missing: install Debian's chromium (make system-deps)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(args: list[str], root: Path) -> Iterator[str]:
    """Run `slideaudit serve ARGS` in `root`/cwd (TMPDIR `root`/tmp, log `root`/serve.log) until
    /healthz answers; yield its base URL; stop it afterwards."""
    port = free_port()
    script = Path(sys.executable).with_name("slideaudit")
    assert script.is_file(), f"{script} is missing: install the project (make install) first"
    for name in ("cwd", "tmp"):
        (root / name).mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(root / "tmp")}
    with open(root / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(script), "serve", *args, "--port", str(port)], cwd=root / "cwd", env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert proc.poll() is None, (root / "serve.log").read_text()
                try:
                    with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
                        if response.read() == b"ok":
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "serve did not start:\n" + (root / "serve.log").read_text()
                time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
