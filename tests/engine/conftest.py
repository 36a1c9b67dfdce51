import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep every index these tests build out of the user's cache (one cache for the whole session)."""
    previous = os.environ.get("SST_FAST_CACHE")
    os.environ["SST_FAST_CACHE"] = str(tmp_path_factory.mktemp("index-cache"))
    yield
    if previous is None:
        os.environ.pop("SST_FAST_CACHE", None)
    else:
        os.environ["SST_FAST_CACHE"] = previous
