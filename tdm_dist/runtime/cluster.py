"""Connecting to Ray: a cluster given ``--address``, else a local instance on this machine."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, min_cpus: float = 0) -> None:
    """``ray.init`` once per process.

    A local instance advertises at least ``min_cpus`` logical CPUs even on a smaller machine, so that a
    job that reserves every core for its actors (Ray Train workers) still leaves Ray Data a CPU to run
    its reading and windowing tasks; the OS shares the cores. A cluster's resources are its own.
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        return
    cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999))
    ray.init(num_cpus=cpus, include_dashboard=False)
    log.info("started a local Ray instance with %d logical CPUs", cpus)
