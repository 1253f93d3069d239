import hashlib
import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from tests.helpers import BASE, PRUNED, make_variant, merged_file, read_tensor

Q0 = "model.layers.0.self_attn.q_proj.weight"  # PRUNED's differs from BASE's


def copy_base(tmp_path):
    return shutil.copytree(BASE, tmp_path / "ckpt")


def test_opens_sharded_checkpoint_without_reading_data():
    ckpt = open_checkpoint(BASE)
    assert list(ckpt.shards) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert len(ckpt.tensors) == 112
    q = ckpt.tensors["model.layers.5.self_attn.q_proj.weight"]
    assert (q.dtype.name, q.shape, q.file) == ("BF16", (128, 64), "model-00002-of-00002.safetensors")
    assert q.nbytes == 128 * 64 * 2
    assert ckpt.config["model_type"] == "gemma4_text"


def test_single_file_checkpoint(tmp_path):
    src = BASE / "model-00001-of-00002.safetensors"
    folder = tmp_path / "single"
    folder.mkdir()
    shutil.copy(src, folder / "model.safetensors")
    from_dir = open_checkpoint(folder)
    from_file = open_checkpoint(folder / "model.safetensors")
    assert list(from_dir.shards) == list(from_file.shards) == ["model.safetensors"]
    assert from_dir.tensors.keys() == from_file.tensors.keys()


def test_single_file_argument_that_is_a_link(tmp_path):
    """Every file of a Hub cache snapshot is a link to blobs/<sha256>: a file argument is
    opened through its link and named as given, beside the link's folder."""
    name = "model-00001-of-00002.safetensors"
    snapshot = make_hub_cache(tmp_path / "hub")
    ckpt = open_checkpoint(snapshot / name)
    assert list(ckpt.shards) == [name] and ckpt.root == snapshot.resolve()
    assert ckpt.tensors.keys() == open_checkpoint(BASE / name).tensors.keys()
    assert {t.file for t in ckpt.tensors.values()} == {name} and ckpt.config is not None
    link = tmp_path / "mine.safetensors"  # a link of another name than its target
    link.symlink_to(BASE / name)
    ckpt = open_checkpoint(link)
    assert (
        list(ckpt.shards) == ["mine.safetensors"]
        and ckpt.shards["mine.safetensors"].file_size == (BASE / name).stat().st_size
    )


def loaded_by_transformers(folder, name):
    """The tensor `name` as transformers' from_pretrained loads the checkpoint `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).state_dict()[name].float().numpy()


def test_a_model_safetensors_beside_an_index_is_read_as_transformers_loads_it(tmp_path):
    """Issue 18: transformers loads model.safetensors before any index, so two folders with
    the same index and shards but other weights in their model.safetensors differ (surgeon
    read the index, and called them identical); the index and shards are ignored, and said so."""
    same, other = copy_base(tmp_path), shutil.copytree(BASE, tmp_path / "other")
    merged_file(BASE, same / "model.safetensors")
    merged_file(PRUNED, other / "model.safetensors")
    result = CliRunner().invoke(main, ["diff", str(same), str(other), "--no-cache", "-q"])
    assert result.exit_code == 1 and result.stdout.startswith("8 of 112 tensors differ"), result.output
    ckpt = open_checkpoint(other)
    assert list(ckpt.shards) == ["model.safetensors"] and ckpt.index_name is None
    assert ckpt.ignored == [*sorted(open_checkpoint(BASE).shards), "model.safetensors.index.json"]
    assert ckpt.note == (
        "model.safetensors is read, as transformers loads it before any index: model.safetensors.index.json and "
        "2 other .safetensors files are ignored, as transformers ignores them"
    )
    assert (loaded_by_transformers(other, Q0) == read_tensor(other, Q0)).all()
    assert (read_tensor(other, Q0) == read_tensor(PRUNED, Q0)).all() and (
        read_tensor(other, Q0) != read_tensor(BASE, Q0)
    ).any()
    shown = CliRunner().invoke(main, ["diff", str(same), str(other), "--no-cache", "--no-stats"])
    assert f"note: other: {ckpt.note}" in " ".join(shown.stdout.split())
    inspected = json.loads(CliRunner().invoke(main, ["inspect", str(other), "--json"]).stdout)
    assert (inspected["index"], inspected["ignored"], inspected["note"]) == (None, ckpt.ignored, ckpt.note)


def test_transformers_weights_in_the_config_names_the_file_read(tmp_path):
    """config.json's `transformers_weights` is the file from_pretrained loads, and nothing else;
    a value transformers refuses, or a file surgeon cannot read as transformers would, is one line."""
    folder = copy_base(tmp_path)
    merged_file(PRUNED, folder / "weights.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"transformers_weights": "weights.safetensors"}))
    ckpt = open_checkpoint(folder)
    assert list(ckpt.shards) == ["weights.safetensors"] and ckpt.note.startswith(
        "weights.safetensors is read, as config.json's transformers_weights names it: model.safetensors.index.json"
    )
    assert (loaded_by_transformers(folder, Q0) == read_tensor(folder, Q0)).all()
    assert (read_tensor(folder, Q0) == read_tensor(PRUNED, Q0)).all()
    for value, problem in (
        ("sub/weights.safetensors", "not a file at the top of the folder"),
        ("pytorch_model.bin", "not a .safetensors file"),
        (7, "not a .safetensors file"),
        ("absent.safetensors", "which is missing"),
    ):
        (folder / "config.json").write_text(json.dumps(config | {"transformers_weights": value}))
        result = CliRunner().invoke(main, ["inspect", str(folder)])
        assert result.exit_code == 2 and problem in result.stderr and result.stderr.count("\n") == 1, result.output


def test_index_naming_a_missing_shard(tmp_path):
    ckpt = copy_base(tmp_path)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        SurgeonError, match=re.escape("index names shard model-00002-of-00002.safetensors which is missing")
    ):
        open_checkpoint(ckpt)


def edit_weight_map(tmp_path, edit) -> object:
    """A copy of the base whose index weight_map went through edit(weight_map)."""
    ckpt = copy_base(tmp_path)
    path = ckpt / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))
    return ckpt


def test_index_naming_a_tensor_the_shard_lacks(tmp_path):
    ckpt = edit_weight_map(
        tmp_path, lambda m: m.update({"model.layers.0.ghost.weight": "model-00001-of-00002.safetensors"})
    )
    with pytest.raises(SurgeonError, match=re.escape("places tensor 'model.layers.0.ghost.weight'")):
        open_checkpoint(ckpt)


def test_index_placing_a_tensor_in_the_wrong_shard(tmp_path):
    ckpt = edit_weight_map(tmp_path, lambda m: m.update({"model.norm.weight": "model-00001-of-00002.safetensors"}))
    with pytest.raises(SurgeonError, match=re.escape("places tensor 'model.norm.weight' in model-00001")):
        open_checkpoint(ckpt)


def test_tensor_missing_from_index(tmp_path):
    ckpt = edit_weight_map(tmp_path, lambda m: m.pop("model.norm.weight"))
    with pytest.raises(SurgeonError, match=re.escape("does not list tensor 'model.norm.weight'")):
        open_checkpoint(ckpt)


def test_tensor_in_two_shards(tmp_path):
    import numpy as np

    ckpt = make_variant(
        tmp_path / "dup",
        add={"model.embed_tokens.weight": ("model-00002-of-00002.safetensors", np.zeros((512, 64)))},
    )
    with pytest.raises(SurgeonError, match="is in both"):
        open_checkpoint(ckpt)


def test_index_must_hold_a_weight_map(tmp_path):
    ckpt = copy_base(tmp_path)
    (ckpt / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(SurgeonError, match="no weight_map"):
        open_checkpoint(ckpt)
    (ckpt / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x.safetensors"}}')
    with pytest.raises(SurgeonError, match="not a plain file name"):
        open_checkpoint(ckpt)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(SurgeonError, match="never unpickles"):
        open_checkpoint(tmp_path)


def test_unknown_path_is_a_clear_error(tmp_path):
    with pytest.raises(SurgeonError, match="no such checkpoint"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(SurgeonError, match=re.escape("not a .safetensors file")):
        open_checkpoint(BASE / "config.json")


def make_hub_cache(root, repo_id="acme/tiny", src=BASE):
    """Lay out `src` the way huggingface_hub caches a download: blobs named by SHA256."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for file in sorted(src.iterdir()):
        data = file.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (repo_dir / "blobs" / sha).write_bytes(data)
        os.symlink(f"../../blobs/{sha}", snapshot / file.name)
    return snapshot


def test_hub_repo_id_resolves_from_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = make_hub_cache(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ckpt = open_checkpoint("acme/tiny")
    assert ckpt.root == snapshot.resolve() or ckpt.root == snapshot
    assert len(ckpt.tensors) == 112
    with pytest.raises(SurgeonError, match="not in the local Hugging Face cache"):
        open_checkpoint("acme/absent")


def test_a_stray_weight_file_beside_model_safetensors_is_named(tmp_path):
    """Issue 18 re-test: with model.safetensors and no index, transformers reads it alone, so
    zz.safetensors is ignored, but silently (ignored: [], no note), while a loader that reads
    every .safetensors file (vLLM's) reads it."""
    folder = tmp_path / "two"
    folder.mkdir()
    merged_file(BASE, folder / "model.safetensors")
    shutil.copy(BASE / "config.json", folder / "config.json")
    merged_file(PRUNED, folder / "zz.safetensors")
    ckpt = open_checkpoint(folder)
    assert list(ckpt.shards) == ["model.safetensors"] and ckpt.ignored == ["zz.safetensors"]
    assert ckpt.note == (
        "model.safetensors is read, as transformers loads it and no other weight file beside it: zz.safetensors "
        "is ignored, as transformers ignores it (a loader that reads every .safetensors file, as vLLM's does, "
        "reads it too)"
    )
    inspected = json.loads(CliRunner().invoke(main, ["inspect", str(folder), "--json"]).stdout)
    assert (inspected["ignored"], inspected["note"]) == (["zz.safetensors"], ckpt.note)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_transformers_weights_naming_no_regular_file(tmp_path, kind):
    """Issue 18 re-test: a FIFO or a link to /dev/zero was reported as "missing"."""
    folder = copy_base(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"transformers_weights": "w.safetensors"}))
    if kind == "fifo":
        os.mkfifo(folder / "w.safetensors")
    else:
        (folder / "w.safetensors").symlink_to("/dev/zero")
    result = CliRunner().invoke(main, ["inspect", str(folder)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.rstrip().endswith("names 'w.safetensors', which is not a regular file")


def test_a_huge_transformers_weights_value_is_cut(tmp_path):
    """Issue 18 re-test: a 2,000,000-character value gave a 2 MB error line."""
    folder = copy_base(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for value in ("x" * 2_000_000 + ".bin", "a/" + "x" * 2_000_000 + ".safetensors"):
        (folder / "config.json").write_text(json.dumps(config | {"transformers_weights": value}))
        result = CliRunner().invoke(main, ["inspect", str(folder)])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and len(result.stderr) < 400, result.stderr[
            :300
        ]
