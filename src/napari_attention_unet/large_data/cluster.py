"""Dask clusters for prediction: a local cluster of worker processes, or an existing scheduler.

:func:`dask_client` starts a :class:`~distributed.LocalCluster` of worker processes, or
connects to an existing scheduler, and closes what it started on exit and on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster, WorkerPlugin

__all__ = ["SchedulerUnreachableError", "TorchThreads", "dask_client", "local_cluster", "usable_cores"]

PLUGIN_NAME = "napari-attention-unet-threads"


class SchedulerUnreachableError(ConnectionError):
    """No dask scheduler answered at the address given."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class TorchThreads(WorkerPlugin):
    """Give torch this worker's share of the cores.

    The nanny starts workers with ``OMP_NUM_THREADS=1``, which would leave torch one
    thread per worker even where a worker has several cores to itself.
    """

    name = PLUGIN_NAME

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(self.threads)


def local_cluster(workers: int, *, memory_limit: str | float = "auto", host: str = "127.0.0.1") -> LocalCluster:
    """``workers`` worker processes with one thread each, listening on ``host`` only, no dashboard.

    The scheduler's HTTP server (health and metrics) still runs; it gets a free port
    instead of 8787, so a second cluster on the machine neither clashes nor warns.
    """
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host=host,
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": f"{host}:0"},
        memory_limit=memory_limit,
        silence_logs=logging.ERROR,  # no worker-state warnings on the terminal when Ctrl-C cancels tasks
    )


@contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    memory_limit: str | float = "auto",
    host: str = "127.0.0.1",
) -> Iterator[Client]:
    """A :class:`distributed.Client`, closed (with any cluster it started) on exit.

    With ``scheduler`` (an address such as ``tcp://10.0.0.5:8786``) it connects to that
    cluster, whose workers keep their own thread settings. Otherwise it starts a local
    cluster of ``workers`` processes (default: one per core) on ``host``, without a
    dashboard. Each local worker runs one task at a time, so one model's activations
    are in memory per worker, and torch gets the worker's share of the cores.
    """
    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as exc:
            raise SchedulerUnreachableError(f"could not reach the dask scheduler {scheduler}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    cores = usable_cores()
    n = workers if workers is not None else cores
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    cluster = local_cluster(n, memory_limit=memory_limit, host=host)
    try:
        client = Client(cluster)
        try:
            client.register_plugin(TorchThreads(max(1, cores // n)), name=PLUGIN_NAME)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()
