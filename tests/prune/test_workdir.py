"""A damaged `prune --workdir` (issue 18): a FIFO hung the run, a link to /dev/zero ran out of
memory, and deep or bad JSON, values of the wrong types and a broken safetensors file were
each an "internal error". Each is now a warning naming the file, and the saved layers are run
again: the output is the one an undamaged run writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil

import pytest
from click.testing import CliRunner

from surgeon.demo import DEMO_MODEL
from surgeon.errors import SurgeonError
from surgeon.format.safetensors import write_safetensors
from surgeon.prune.engine import prune
from tests.helpers import TINY_CORPUS, encode, sha, tiny_prune_options
from tests.test_bounds import MB, bounded, finishes

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
    # a forged workdir once changed layer 5 of the output with no warning, and published NaN
    "another-layers-tensor": (
        "layers/00000.safetensors",
        lambda p: _add_tensor(p, "model.layers.5.mlp.down_proj.weight"),
    ),
    "nan-scores": ("layers/00000.json", lambda p: _edit_record(p, scores=[math.nan, math.inf])),
}


def _add_tensor(path, name) -> None:
    """The layer's file with one more tensor of the base, of its dtype and shape, all 7.0."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    base = load_file(DEMO_MODEL / "model-00001-of-00002.safetensors") | load_file(
        DEMO_MODEL / "model-00002-of-00002.safetensors"
    )
    tensors[name] = base[name].clone().fill_(7.0)
    save_file(tensors, path)


def _edit_record(path, **values) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | values))  # Python's json writes NaN


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_workdir_entry_runs_the_saved_layers_again(finished, tmp_path, case):
    name, damage = DAMAGE[case]
    work = shutil.copytree(finished / "work", tmp_path / "work")
    target = work / name
    if case in ("another-layer", "foreign-tensor", "another-layers-tensor", "nan-scores"):  # edited in place
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


def test_the_manifest_is_never_written_with_a_number_json_has_not():
    from surgeon.format.manifest import manifest_json

    with pytest.raises(SurgeonError, match="not finite"):
        manifest_json({"layers": [{"scores": [math.nan]}]})
    assert json.loads(manifest_json({"scores": [0.5]})) == {"scores": [0.5]}


def _cli_prune(base, out, work, *more):
    from surgeon.cli.main import main

    args = ["prune", base, "-o", out, "--workdir", work, "-q", "--calib", TINY_CORPUS, "--layers", "0-1", *more]
    return CliRunner().invoke(main, [str(a) for a in args])


FOREIGN = {  # what the user has in the folder named, and what the refusal names
    "project": ({"layers/attention.py": "code", "stream.json": "{}"}, "layers/attention.py, stream.json"),
    "surgeon's names only": ({"stream.json": "{}"}, "stream.json"),  # no fingerprint.json: not surgeon's
    "a subfolder": ({"fingerprint.json": "{}", "src/main.py": "code"}, "src"),
    "a layers file": (
        {"fingerprint.json": "{}", "layers/notes.txt": "x", "layers/00000.json": "{}"},
        "layers/notes.txt",
    ),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_a_workdir_holding_what_surgeon_did_not_write_is_refused_and_left_alone(tmp_path, case):
    """`--workdir proj` once deleted proj/layers/attention.py and the user's proj/stream.json."""
    files, named = FOREIGN[case]
    work = tmp_path / "proj"
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    result = _cli_prune(DEMO_MODEL, tmp_path / "out", work)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"surgeon: error: {work}: holds files surgeon did not write ({named}): choose an empty or new folder\n"
    )
    assert {str(p.relative_to(work)): p.read_text() for p in work.rglob("*") if p.is_file()} == files
    assert not (tmp_path / "out").exists()


def test_a_finished_workdir_with_a_file_added_is_refused(finished, tmp_path):
    work = shutil.copytree(finished / "work", tmp_path / "work")
    (work / "notes.txt").write_text("mine")
    result = _cli_prune(DEMO_MODEL, tmp_path / "out", work, "--prune-frac", "0.5")  # other options: a fresh start
    assert result.exit_code == 2 and "(notes.txt)" in result.stderr, result.output
    assert (work / "layers" / "00001.safetensors").exists() and (work / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", [".", ".."])
def test_the_current_folder_or_one_holding_it_is_no_workdir(tmp_path, monkeypatch, where):
    """A second run `--workdir .` in a folder with only layers/ said "starting fresh" and
    deleted layers/attention.py, with a warning naming an empty folder name."""
    here = tmp_path / "proj" / "sub"
    (here / "layers").mkdir(parents=True)
    (here / "layers" / "attention.py").write_text("code")
    monkeypatch.chdir(here)
    result = _cli_prune(DEMO_MODEL, tmp_path / "out", where)
    assert result.exit_code == 2 and result.stderr.startswith(f"surgeon: error: {where}: refusing to write over"), (
        result.output
    )
    assert (here / "layers" / "attention.py").read_text() == "code"


@pytest.mark.parametrize("inside", ["", "wd"])
def test_a_workdir_over_or_inside_the_output_is_refused_before_any_work(tmp_path, inside):
    """`-o X --workdir X` (and `--workdir X/wd` with --force) failed only after the whole run."""
    out = tmp_path / "X"
    out.mkdir()
    phases: list = []
    with pytest.raises(SurgeonError, match="the workdir may not be the output folder"):
        prune(
            DEMO_MODEL,
            out,
            tiny_prune_options(**OPTIONS),
            workdir=out / inside,
            force=True,
            on_phase=lambda *a: phases.append(a),
        )
    assert phases == [] and list(out.iterdir()) == []


def test_a_big_tokenizer_file_is_not_read_whole(tmp_path):
    """A 3 GB sparse tokenizer.sparse beside the tokenizer was read whole for the workdir's
    fingerprint: 6.6 GB of memory. A file past the side-file bound stands by its size."""
    base = shutil.copytree(DEMO_MODEL, tmp_path / "base")
    with open(base / "tokenizer.sparse", "wb") as handle:
        handle.truncate(1 << 30)
    with bounded(limit=200 * MB):
        result = prune(base, tmp_path / "out", tiny_prune_options(**OPTIONS), workdir=tmp_path / "work")
    assert result.resumed_at == 0


def test_a_tokenizer_link_out_of_the_base_is_not_read(tmp_path):
    """As the writer's side files: a link out of the base folder is not followed, so what it
    points to is not read (nor can its changing make the saved work stale)."""
    base = shutil.copytree(DEMO_MODEL, tmp_path / "base")
    outside = tmp_path / "secret.txt"
    outside.write_text("one")
    (base / "tokenizer.secret").symlink_to(outside)
    prune(base, tmp_path / "a", tiny_prune_options(**OPTIONS), workdir=tmp_path / "work")
    outside.write_text("two")
    again = prune(base, tmp_path / "b", tiny_prune_options(**OPTIONS), workdir=tmp_path / "work")
    assert again.resumed_at == 2 and again.manifest["messages"] == []
