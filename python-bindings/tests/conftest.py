import pytest

SCHEDULERS = ["sync", "threads"]


@pytest.fixture(params=SCHEDULERS)
def scheduler(request):
    """Every test taking `scheduler` runs on each local scheduler."""
    return request.param
