"""A damaged `prune --workdir` (issue 18): a FIFO hung the run, a link to /dev/zero ran out of
memory, and deep or bad JSON, values of the wrong types and a broken safetensors file were
each an "internal error". Each is now a warning naming the file, and the saved layers are run
again: the output is the one an undamaged run writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from surgeon.demo import DEMO_MODEL
from surgeon.format.safetensors import write_safetensors
from surgeon.prune.engine import prune
from tests.helpers import TINY_CORPUS, encode, sha, tiny_prune_options
from tests.test_bounds import finishes

OPTIONS = {"prune_frac": 0.25, "layers": "0-1"}  # layers 0 and 1 run and saved, the stream enters 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run's workdir and output, to damage copies of."""
    folder = tmp_path_factory.mktemp("workdir")
    prune(DEMO_MODEL, folder / "out", tiny_prune_options(**OPTIONS), workdir=folder / "work")
    return folder


def _replace(path, write) -> None:
    os.unlink(path)
    write(path)


DAMAGE = {
    "fifo": ("layers/00000.json", os.mkfifo),
    "dev-zero": ("layers/00001.json", lambda p: p.symlink_to("/dev/zero")),
    "deep-json": ("stream.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
    "bad-json": ("layers/00000.json", lambda p: p.write_text('{"layer": 0,')),
    "wrong-types": ("stream.json", lambda p: p.write_text(json.dumps({"next_layer": "2"}))),
    "not-safetensors": ("stream.safetensors", lambda p: p.write_bytes(b"\x08" + bytes(7) + b"{garbage")),
    "another-layer": ("layers/00000.json", lambda p: p.write_text(p.read_text().replace('"layer": 0', '"layer": 5'))),
    "foreign-tensor": (
        "layers/00000.safetensors",
        lambda p: write_safetensors(p, [encode("model.layers.0.self_attn.nope", "F32", [[1.0]])]),
    ),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_workdir_entry_runs_the_saved_layers_again(finished, tmp_path, case):
    name, damage = DAMAGE[case]
    work = shutil.copytree(finished / "work", tmp_path / "work")
    target = work / name
    if case in ("another-layer", "foreign-tensor"):  # edited in place
        damage(target)
    else:
        _replace(target, damage)
    warnings: list[str] = []
    try:
        result = finishes(
            lambda: prune(
                DEMO_MODEL, tmp_path / "out", tiny_prune_options(**OPTIONS), workdir=work, on_warning=warnings.append
            ),
            seconds=120,
        )
    finally:
        with contextlib.suppress(OSError):  # unblock a reader that did wait on the FIFO
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
    assert not isinstance(result, Exception), f"{type(result).__name__}: {result}"
    assert result.resumed_at == 0
    assert len(warnings) == 1 and warnings[0].startswith(str(target)), warnings
    assert warnings[0].endswith("; the saved layers are run again") and warnings == result.manifest["messages"]
    for shard in (finished / "out").glob("*.safetensors"):
        assert sha(tmp_path / "out" / shard.name) == sha(shard)
    again = prune(DEMO_MODEL, tmp_path / "again", tiny_prune_options(**OPTIONS), workdir=work)
    assert again.resumed_at == 2 and again.manifest["messages"] == []  # the work saved anew resumes


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "deep-json"])
def test_a_damaged_fingerprint_starts_fresh_and_says_why(finished, tmp_path, case):
    work = shutil.copytree(finished / "work", tmp_path / "work")
    stamp = work / "fingerprint.json"
    _replace(stamp, DAMAGE[case][1])
    try:
        result = finishes(
            lambda: prune(DEMO_MODEL, tmp_path / "out", tiny_prune_options(**OPTIONS), workdir=work), seconds=120
        )
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(stamp, os.O_WRONLY | os.O_NONBLOCK))
    assert not isinstance(result, Exception), f"{type(result).__name__}: {result}"
    reason = "not valid JSON (nested too deeply)" if case == "deep-json" else "not a regular file"
    # the manifest names the workdir by its folder's name, never a path of this machine
    assert result.resumed_at == 0 and result.manifest["messages"] == [
        f"work/fingerprint.json: {reason}; starting fresh"
    ]


def test_the_cli_says_it_in_one_warning_line(finished, tmp_path):
    from surgeon.cli.main import main

    work = shutil.copytree(finished / "work", tmp_path / "work")
    _replace(work / "stream.safetensors", lambda p: p.symlink_to("/dev/zero"))
    args = ["prune", DEMO_MODEL, "-o", tmp_path / "out", "--workdir", work, "-q", "--calib", TINY_CORPUS]
    args += ["--prune-frac", "0.25", "--layers", "0-1"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"surgeon: warning: {work / 'stream.safetensors'}: not a regular file; the saved layers are run again\n"
    )
