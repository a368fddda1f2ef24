"""A wall-time limit on a block of code in the current thread, for the per-slide stages.

When the limit passes, a timer thread raises StageTimeout in the block's thread
(CPython's PyThreadState_SetAsyncExc): it arrives at the next Python bytecode, so a long call
into C (a decoder, a torch kernel) finishes that call first; context managers unwinding on the
way out remove the half-written outputs as for any other exception. Code that swallows every
exception (a garbage-collector callback such as distributed's, a broad `except`) may catch it
where it lands: then the block runs on, and StageTimeout is raised when it ends (its outputs,
written atomically, are whole; a rerun finds them current).
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from pipeline.errors import StageTimeout


def _raise_in(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(StageTimeout))


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Run the block for at most `seconds` (None: no limit), else StageTimeout naming `what`,
    the limit and the setting that raises it (run.stage_timeout)."""
    if seconds is None:
        yield
        return
    guard, running, fired = threading.Lock(), [True], [False]

    def expire() -> None:
        with guard:
            if running[0]:
                fired[0] = True
                _raise_in(thread_id)

    thread_id = threading.get_ident()
    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        try:
            yield
        finally:
            with guard:
                running[0] = False
            timer.cancel()
        if fired[0]:  # it landed where it was swallowed
            raise StageTimeout
    except StageTimeout:
        raise StageTimeout(f"{what} ran past its limit of {seconds:g} s; raise it with "
                           f"--set run.stage_timeout=SECONDS (or null for none)") from None
