import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own hash and canary caches: no state leaks between tests."""
    monkeypatch.setenv("SURGEON_CACHE_DIR", str(tmp_path / "surgeon-cache"))
    monkeypatch.setenv("SURGEON_CANARY_CACHE", str(tmp_path / "surgeon-canary-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "surgeon-cache"
