"""One local Ray cluster for the whole session, on loopback (copd_lab.ray_cluster.loopback_env), with logical CPUs
for every expert of a test; the test process's own HOME is given back once Ray has started."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from copd_lab.ray_cluster import loopback_env

    saved = dict(os.environ)
    loopback_env()
    ray.init(num_cpus=16, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    os.environ.clear()
    os.environ.update(saved)
    yield ray
    ray.shutdown()
