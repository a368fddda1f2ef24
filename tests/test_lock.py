"""OUT's lock names its holder (OUT/.lock.json), and `run --wait` says whose lock it waits for and how long."""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import OutLocked
from pipeline.runner import locked
from tiling.store.names import LOCK_OWNER


def test_a_waiting_run_names_the_holder_and_keeps_saying_how_long(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    hold = (f"import time; from pathlib import Path; from pipeline.runner import locked\n"
            f"with locked(Path({str(tmp_path)!r}), wait=False):\n print('held', flush=True); time.sleep(2.5)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    whose = f"pid {holder.pid} on {socket.gethostname()}, started "
    with pytest.raises(OutLocked, match=re.escape(whose)), locked(tmp_path, wait=False):
        pass
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pipeline.runner"), locked(tmp_path, wait=True, every=0.4):
        assert time.monotonic() - start > 1 and holder.wait(timeout=10) == 0
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_OWNER).read_text()
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for the run")]
    assert len(waiting) >= 2 and all(whose in line for line in waiting), waiting
    seconds = [float(re.search(r": (\d+) s so far", line).group(1)) for line in waiting]  # type: ignore[union-attr]
    assert seconds == sorted(seconds) and seconds[-1] >= 1
    assert not (tmp_path / LOCK_OWNER).exists()  # released: no holder named
