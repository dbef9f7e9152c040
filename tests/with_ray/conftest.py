"""One local Ray cluster for the whole session, on loopback (copd_lab.distributed.ray_cluster.loopback_env), with
logical CPUs for every expert of a test; the test process's own HOME is given back once Ray has started."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    from copd_lab.distributed.ray_cluster import LOOPBACK, loopback_env

    saved = dict(os.environ)
    loopback_env()  # before Ray is imported: it reads its settings then
    import ray

    ray.init(num_cpus=16, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             _node_ip_address=LOOPBACK)
    os.environ.clear()
    os.environ.update(saved)
    yield ray
    ray.shutdown()
