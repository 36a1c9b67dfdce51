import pytest


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    """Keep every index these tests build out of the user's cache."""
    monkeypatch.setenv("SST_FAST_CACHE", str(tmp_path / "default-cache"))
