import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2`: each worker process is one of the two cores. torch would start one
    # intra-op thread per core in every worker (4 threads on 2 cores), and its threads spin
    # while they wait; surgeon already runs the tiny test models on one thread
    # (surgeon/prune/threads.py), and this pins the tests' own torch work and their CLI
    # subprocesses the same way. Set before any test module imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own hash and canary caches: no state leaks between tests."""
    monkeypatch.setenv("SURGEON_CACHE_DIR", str(tmp_path / "surgeon-cache"))
    monkeypatch.setenv("SURGEON_CANARY_CACHE", str(tmp_path / "surgeon-canary-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "surgeon-cache"


@pytest.fixture(scope="session")
def _session_canary_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("surgeon-canary-cache")


@pytest.fixture
def shared_canary_cache(isolated_cache, monkeypatch, _session_canary_cache):
    """One canary cache for the tests that ask for it (`usefixtures("shared_canary_cache")`),
    instead of one per test. The base's outputs and its self-check on the demo pair's 25
    prompts cost 6.6 CPU s (3.5 times a canary run on it, measured on the shared 2-core box);
    computed once, every later canary of the same base reads them. An entry is keyed by
    everything that could change it (weights, tokenizer, prompt, options, versions), so a
    test reads only what it would have computed itself. A test that checks the cache's state
    (a first run computes, a second hits), writes into it or cancels the base's generation
    keeps its own, as before."""
    monkeypatch.setenv("SURGEON_CANARY_CACHE", str(_session_canary_cache))
    return _session_canary_cache


@pytest.fixture(scope="session")
def channels_0_1(tmp_path_factory):
    """The demo model with a quarter of the MLP channels (32 of 128) removed in layers 0-1 and
    no head, in mask mode: read only, by the prune, diff, verify and TUI tests of issue 22."""
    from surgeon.demo import DEMO_MODEL
    from surgeon.prune.engine import prune
    from tests.helpers import tiny_prune_options

    out = tmp_path_factory.mktemp("ffn") / "cand"  # the name the TUI's golden screenshot shows
    prune(DEMO_MODEL, out, tiny_prune_options(ffn_frac=0.25, prune_frac=0.0, layers="0-1"))
    return out
