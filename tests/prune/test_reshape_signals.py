"""Reshape mode (issue 21) under signals: `surgeon reshape` and `surgeon prune --mode reshape`
run in a subprocess, signalled at a set point of the write (a hook in the child sends the
signal to itself, so the test does not race the clock). SIGINT exits 130 and SIGTERM 143,
with no output published, nothing left beside it (the temporary folders, prune's mask-mode
build) and the inputs byte for byte as they were. A kill -9 cannot clean up: what it leaves
must not block the next run, which sweeps it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_MODEL
from tests.prune.test_reshape import mask, tiny

pytest.importorskip("transformers")

SHORT = ["--calib-tokens", "512", "--sample-tokens", "128", "-q"]
PRUNE = ["--mode", "reshape", "--prune-frac", "0.25", *SHORT]

# In the child: `target` (module:attribute) first sends the signal to its own process, then
# waits for it to land (a handler raises in the main thread; SIGKILL never returns).
HOOK = textwrap.dedent(
    """
    import importlib, os, signal, sys, time
    # Ctrl-C in a foreground run: a shell's background job (pytest itself under `&`) starts its
    # children with SIGINT ignored, and surgeon leaves an ignored signal ignored, as under nohup
    signal.signal(signal.SIGINT, signal.default_int_handler)
    module, name, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target = importlib.import_module(module)
    original = getattr(target, name)

    def hooked(*args, **kwargs):
        os.kill(os.getpid(), number)
        time.sleep(5)
        return original(*args, **kwargs)

    setattr(target, name, hooked)
    from surgeon.cli.main import main
    sys.argv = ["surgeon", *sys.argv[4:]]
    main()
    """
)


def run_signalled(where: str, number: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    module, name = where.split(":")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).parents[2]))
    return subprocess.run(
        [sys.executable, "-c", HOOK, module, name, str(number), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    return mask(tiny(root, "llama", layers=2), root / "masked", {0: [0, 1], 1: [4, 5]})


EXITS = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.mark.parametrize("number", EXITS, ids=lambda n: n.name)
@pytest.mark.parametrize("where", ["surgeon.format.reshaped:_rewrite_shard", "surgeon.format.reshaped:_emit"])
def test_a_signal_during_surgeon_reshape_publishes_nothing(masked, tmp_path, where, number):
    before = digests(masked)
    done = run_signalled(where, number, ["reshape", str(masked), "-o", "out", "--no-progress"], tmp_path)
    assert done.returncode == EXITS[number], done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []
    assert digests(masked) == before


@pytest.mark.parametrize("number", EXITS, ids=lambda n: n.name)
@pytest.mark.parametrize(
    "where",
    [
        "surgeon.format.writer:copy_side_files",  # the mask-mode build being written
        "surgeon.prune.reshape:reshape",  # the mask-mode build written, the slicing not begun
        "surgeon.format.reshaped:_rewrite_shard",  # the reshaped output being written
    ],
)
def test_a_signal_during_prune_mode_reshape_publishes_nothing(tmp_path, where, number):
    before = digests(DEMO_MODEL)
    done = run_signalled(where, number, ["prune", str(DEMO_MODEL), "-o", "out", *PRUNE], tmp_path)
    assert done.returncode == EXITS[number], done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no mask-mode build, no temporary folder
    assert digests(DEMO_MODEL) == before


def test_a_mask_mode_build_left_by_a_kill_9_is_swept_by_the_next_run(tmp_path):
    done = run_signalled(
        "surgeon.prune.reshape:reshape", signal.SIGKILL, ["prune", str(DEMO_MODEL), "-o", "out", *PRUNE], tmp_path
    )
    assert done.returncode == -signal.SIGKILL
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "the kill left no mask-mode build to sweep"
    result = CliRunner().invoke(main, ["prune", str(DEMO_MODEL), "-o", str(tmp_path / "out"), *PRUNE])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_stale_folder_at_the_mask_mode_builds_old_name_is_neither_in_the_way_nor_deleted(tmp_path, monkeypatch):
    """A container's PIDs repeat from one run to the next: a folder left under the name the
    build would take (`.out.masked-PID`) once made the run fail naming that folder, and was
    then deleted by it."""
    stale = tmp_path / f".out.masked-{os.getpid()}"
    stale.mkdir()
    (stale / "keep.txt").write_text("not surgeon's")
    result = CliRunner().invoke(main, ["prune", str(DEMO_MODEL), "-o", str(tmp_path / "out"), *PRUNE])
    assert result.exit_code == 0, result.output
    assert (stale / "keep.txt").read_text() == "not surgeon's"


def test_a_signal_while_the_shards_are_handed_out_stops_the_ones_already_running(monkeypatch):
    """SIGTERM from the first shard's worker landed in the main thread while it was still
    submitting (inside Thread.start): the stop flag was never set, the worker wrote on after
    `surgeon: terminated`, and its next self-signal found the default handler (exit -15)."""
    from concurrent.futures import ThreadPoolExecutor

    from surgeon.parallel import map_cancellable

    seen = []
    started = threading.Event()

    def work(item, should_stop):
        started.set()
        for _ in range(500):  # 5 s at most
            if should_stop():
                seen.append(item)
                return item
            time.sleep(0.01)
        return item

    submit = ThreadPoolExecutor.submit

    def interrupted(self, *args, **kwargs):
        if started.is_set():
            raise KeyboardInterrupt  # the handler's Terminated, raised in the main thread
        future = submit(self, *args, **kwargs)
        started.wait(5)
        return future

    monkeypatch.setattr(ThreadPoolExecutor, "submit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        map_cancellable(work, ["a", "b"], 2)
    assert seen == ["a"]
