import pytest

import partita as pt

SCHEDULERS = ["sync", "threads", "cluster"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "local_only: observes side effects of Python functions in this process"
    )


@pytest.fixture(scope="session")
def cluster_client():
    """A scheduler and two worker processes (`python -m partita`) for the whole session."""
    with pt.LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        with pt.Client(cluster) as client:
            yield client


@pytest.fixture(params=SCHEDULERS)
def scheduler(request):
    """Every test taking `scheduler` runs on each local scheduler and on a LocalCluster."""
    if request.param == "cluster":
        if request.node.get_closest_marker("local_only"):
            pytest.skip("side effects of functions run on workers are not seen here")
        return request.getfixturevalue("cluster_client")
    return request.param
