"""Hostile input to reshape mode (issue 21): a reshaped checkpoint's prune_manifest.json
`reshape` block is data from the internet. verify reads it to pick the rows it compares:
an entry of the wrong type is one line and exit 2 (a malformed manifest), never an
internal error, and a block that names no layer, or a layer the checkpoint lacks, is a
failed check, not a vacuous pass."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.prune.reshape import reshape
from tests.prune.test_reshape import mask, tiny

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(masked, reshaped): a 2-layer GQA Llama, KV group 0 gone in layer 0, group 2 in layer 1."""
    root = tmp_path_factory.mktemp("hostile")
    masked = mask(tiny(root, "llama", layers=2), root / "masked", {0: [0, 1], 1: [4, 5]})
    reshape(masked, root / "out")
    return masked, root / "out"


def edited(pair, tmp_path, edit):
    masked, out = pair
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "prune_manifest.json").read_text())
    edit(manifest)
    (copy / "prune_manifest.json").write_text(json.dumps(manifest))
    return CliRunner().invoke(main, ["verify", str(copy), "--base", str(masked), "--no-progress"])


def entry(key, value):
    return lambda m: m["reshape"]["layers"][0].__setitem__(key, value)


def drop(key):
    return lambda m: m["reshape"]["layers"][0].pop(key)


MALFORMED = {
    "kept_heads an int": entry("kept_heads", 5),
    "kept_heads null": entry("kept_heads", None),
    "kept_heads strings": entry("kept_heads", ["2", "3", "4", "5", "6", "7"]),
    "kept_heads a float": entry("kept_heads", [2.0, 3, 4, 5, 6, 7]),
    "kept_heads missing": drop("kept_heads"),
    "kept_kv_heads missing": drop("kept_kv_heads"),
    "layer missing": drop("layer"),
    "layer a string": entry("layer", "0"),
    "layer negative": entry("layer", -1),
    "head_dim missing": drop("head_dim"),
    "head_dim a float": entry("head_dim", 12.0),
    "entry not an object": lambda m: m["reshape"]["layers"].__setitem__(0, 5),
    "layers not a list": lambda m: m["reshape"].__setitem__("layers", {"a": 1}),
    "a layer named twice": lambda m: m["reshape"]["layers"].__setitem__(1, m["reshape"]["layers"][0]),
}


@pytest.mark.parametrize("edit", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_reshape_entry_is_one_line_and_exit_2(pair, tmp_path, edit):
    result = edited(pair, tmp_path, edit)
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert "malformed manifest" in result.output


def test_a_reshape_block_with_no_layers_is_not_a_vacuous_pass(pair, tmp_path):
    result = edited(pair, tmp_path, lambda m: m["reshape"].__setitem__("layers", None))
    assert result.exit_code == 1, result.output
    assert "names no layer" in result.output
    assert "the reshape's claims hold" not in result.output


def test_a_layer_the_checkpoint_lacks_fails_the_check(pair, tmp_path):
    result = edited(pair, tmp_path, entry("layer", 57))
    assert result.exit_code == 1, result.output
    assert "layer 57: no q_proj in either checkpoint" in result.output


# ---------- an output folder that cannot be written ----------


def _no_write_in(folder, monkeypatch):
    """Creating anything in `folder` fails with EACCES, as in a chmod 555 folder (the tests
    may run as root, whom chmod does not stop)."""
    import errno
    import os

    real_mkdir, real_open = os.mkdir, os.open

    def refused(path):
        return os.path.dirname(os.path.abspath(os.fspath(path))) == str(folder)

    def mkdir(path, *args, **kwargs):
        if refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and refused(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def _digests(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_reshape_into_a_read_only_folder_is_one_line_naming_the_output(pair, tmp_path, monkeypatch):
    masked, _ = pair
    before = _digests(masked)
    folder = tmp_path / "ro"
    folder.mkdir()
    _no_write_in(folder, monkeypatch)
    result = CliRunner().invoke(main, ["reshape", str(masked), "-o", str(folder / "out"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"surgeon: error: {folder / 'out'}: cannot write (Permission denied)"
    assert list(folder.iterdir()) == [] and _digests(masked) == before


def test_prune_mode_reshape_into_a_read_only_folder_names_the_output_not_its_mask_mode_build(tmp_path, monkeypatch):
    from surgeon.demo import DEMO_MODEL

    before = _digests(DEMO_MODEL)
    folder = tmp_path / "ro"
    folder.mkdir()
    _no_write_in(folder, monkeypatch)
    args = ["prune", str(DEMO_MODEL), "-o", str(folder / "out"), "--mode", "reshape", "--prune-frac", "0.25"]
    result = CliRunner().invoke(main, [*args, "--calib-tokens", "512", "--sample-tokens", "128", "-q"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"surgeon: error: {folder / 'out'}: cannot write (Permission denied)"
    assert list(folder.iterdir()) == [] and _digests(DEMO_MODEL) == before
