"""Where the graph runs: a LocalCluster of worker processes, or an existing Dask scheduler."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

from pipeline.config import ConfigError, RunSettings

log = logging.getLogger(__name__)
# the run's own workers do without Dask's statistical profiler: it samples every thread's stack
# every 10 ms and keeps an hour of per-second profiles (distributed.worker.profile), which on an
# archive of 1,000 slides grew each worker by ~1 MiB a slide and slowed every stage by a third
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
# threads per worker process: torch/OpenMP, BLAS, OpenCV, and the tile stage's reads (tiling.threads.stage_threads)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


def torch_threads(settings: RunSettings) -> int:
    """Threads for torch/OpenMP (and OpenCV, and tile reads) per worker: `settings.torch_threads`,
    or cores // workers (>= 1)."""
    return settings.torch_threads or max(1, (os.cpu_count() or 1) // max(1, settings.workers))


def gpu_workers(client: Client) -> int:
    """How many of the cluster's workers offer the resource "GPU"."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return sum(1 for w in workers if w.get("resources", {}).get("GPU", 0) >= 1)


@contextlib.contextmanager
def _quiet(logger: str, level: int) -> Iterator[None]:
    """Raise `logger`'s level to at least `level` for the block (unless debugging)."""
    log_ = logging.getLogger(logger)
    old = log_.level
    if not log.isEnabledFor(logging.DEBUG):
        log_.setLevel(max(level, old))
    try:
        yield
    finally:
        log_.setLevel(old)


SHUTDOWN_LOGGERS = ("distributed", "tornado", "asyncio")  # what logs a closing cluster's lost connections


@contextlib.contextmanager
def _levels_kept(names: tuple[str, ...]) -> Iterator[None]:
    """Restore the levels of the loggers `names` after the block."""
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _silence(names: tuple[str, ...]) -> None:
    """Only CRITICAL from the loggers `names` (unless debugging)."""
    if not log.isEnabledFor(logging.DEBUG):
        for name in names:
            logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def open_client(settings: RunSettings, gpu: bool = False) -> Iterator[Client]:
    """A Client on `settings.scheduler`, or on a new LocalCluster of `settings.workers` processes
    (one task thread each, `torch_threads` OpenMP, OpenCV and read threads, resources {"GPU": 1} when `gpu`, no
    per-stage progress bars: the client shows the run's, no profiler: WORKER_CONFIG).

    Logs the dashboard link. With `gpu`, fails when no worker offers a GPU (explain would wait
    forever). Dask's own INFO logs are silenced, and the nanny's warning when it has to kill a
    worker slow to exit at shutdown (interpreter teardown after great-expectations takes seconds);
    the workers log only CRITICAL (a task's error is its slide's failure, `pipeline.stages`), and
    while the client and cluster close, so do distributed, tornado and asyncio here: a clean
    shutdown prints no traceback of a connection closed under it. -v (debug) keeps every log.
    """
    if settings.workers < 1:
        raise ConfigError(f"run.workers = {settings.workers}: need at least 1 worker")
    debug = log.isEnabledFor(logging.DEBUG)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_levels_kept(SHUTDOWN_LOGGERS))
        stack.enter_context(_quiet("distributed", logging.WARNING))
        stack.enter_context(_quiet("distributed.nanny", logging.ERROR))
        if settings.scheduler:
            try:
                client = stack.enter_context(Client(settings.scheduler, timeout="20s"))
            except OSError as exc:
                raise ConfigError(f"--scheduler {settings.scheduler}: cannot connect ({exc}); "
                                  "start `dask scheduler` there or drop --scheduler") from exc
        else:
            threads = str(torch_threads(settings))
            stack.enter_context(dask.config.set(WORKER_CONFIG))  # the workers start with it
            cluster = stack.enter_context(LocalCluster(
                n_workers=settings.workers, threads_per_worker=1, processes=True,
                dashboard_address=settings.dashboard, resources={"GPU": 1} if gpu else None,
                silence_logs=False if debug else logging.CRITICAL,
                env={**dict.fromkeys(THREAD_VARS, threads), "TQDM_DISABLE": "1"}))
            client = stack.enter_context(Client(cluster))
        if gpu and not gpu_workers(client):
            raise ConfigError(f"{client.scheduler.address}: no worker offers a GPU; start workers "
                              "with `dask worker ADDRESS --resources GPU=1` or pass --device cpu")
        log.info("Dask dashboard: %s", client.dashboard_link)
        stack.callback(_silence, SHUTDOWN_LOGGERS)  # runs first on the way out, before the client closes
        yield client
