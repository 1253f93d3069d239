import json
import shutil

import numpy as np
import pytest

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.report import family_rows, to_json
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.safetensors import TensorBytes, write_safetensors
from tests.helpers import BASE, PRUNED, make_variant, read_tensor

PRUNED_HEAD = {layer: (layer * 3 + 1) % 8 for layer in range(4)}  # as fixtures/build_fixtures.py


def run(base, other, **options):
    return diff_checkpoints(open_checkpoint(base), open_checkpoint(other), DiffOptions(**options))


def by_name(report):
    return {t.name: t for t in report.tensors}


def test_reference_card_situation():
    report = run(BASE, PRUNED)
    changed = sorted(t.name for t in report.tensors if t.status != "identical")
    assert changed == sorted(
        f"model.layers.{layer}.self_attn.{proj}.weight" for layer in range(4) for proj in ("q_proj", "o_proj")
    )
    assert report.layers_changed() == [0, 1, 2, 3]
    assert not report.identical
    shards = {s.name: s for s in report.shards}
    assert shards["model-00001-of-00002.safetensors"].status == "changed"
    assert shards["model-00001-of-00002.safetensors"].tensors_differing == 8
    header_only = shards["model-00002-of-00002.safetensors"]
    assert header_only.status == "header-only"
    assert header_only.header_differences == ["__metadata__.surgeon_build added"]
    assert header_only.sha256[0] != header_only.sha256[1]
    assert {f.name: f.status for f in report.files} == {
        "config.json": "identical",
        "model.safetensors.index.json": "identical",
    }


def test_tensor_hashes_are_sha256_of_the_raw_bytes():
    report = run(BASE, PRUNED)
    ckpt = open_checkpoint(PRUNED)
    import hashlib

    for t in report.tensors[:20]:
        info = ckpt.tensors[t.name]
        data = (PRUNED / info.file).read_bytes()[info.start : info.end]
        assert t.other.sha256 == hashlib.sha256(data).hexdigest()
        assert (t.base.sha256 == t.other.sha256) == (t.status == "identical")
    shard = report.shards[1]
    assert shard.sha256[1] == hashlib.sha256((PRUNED / shard.name).read_bytes()).hexdigest()


def test_per_head_view_of_the_prune():
    tensors = by_name(run(BASE, PRUNED))
    for layer, head in PRUNED_HEAD.items():
        q = tensors[f"model.layers.{layer}.self_attn.q_proj.weight"].heads
        o = tensors[f"model.layers.{layer}.self_attn.o_proj.weight"].heads
        assert (q.axis, q.num_heads, q.head_dim) == ("rows", 8, 8)
        assert (o.axis, o.num_heads, o.head_dim) == ("cols", 8, 8)
        assert q.heads_with("zeroed") == [head] and q.heads_with("changed") == []
        assert o.heads_with("zeroed") == [head]
        assert o.heads_with("changed") == [h for h in range(8) if h != head]
        assert q.uniform_attention == []


def test_stats_match_numpy():
    report = run(BASE, PRUNED)
    name = "model.layers.2.self_attn.o_proj.weight"
    stats = by_name(report)[name].stats
    b = read_tensor(BASE, name).astype(np.float64)
    o = read_tensor(PRUNED, name).astype(np.float64)
    d = o - b
    assert stats.max_abs_delta == pytest.approx(np.abs(d).max())
    assert stats.rel_frobenius == pytest.approx(np.linalg.norm(d) / np.linalg.norm(b))
    cosine = (b * o).sum() / (np.linalg.norm(b) * np.linalg.norm(o))
    assert stats.cosine == pytest.approx(cosine)
    assert stats.frac_changed == pytest.approx(np.mean(b != o))


def test_identical_checkpoints(tmp_path):
    copy = shutil.copytree(BASE, tmp_path / "copy")
    report = run(BASE, copy)
    assert report.identical
    assert {t.status for t in report.tensors} == {"identical"}
    assert {s.status for s in report.shards} == {"identical"}
    assert report.layers_changed() == []


def test_a_checkpoint_without_layers_reports_no_changed_layers(tmp_path):
    """Outside any layer stack there are no layer numbers: the summary said "in layers None"
    and the JSON "layers_changed": [null] before (mypy found it)."""
    for side, value in (("a", 0.0), ("b", 1.0)):
        (tmp_path / side).mkdir()
        data = np.full((2, 2), value, dtype="<f4").tobytes()
        write_safetensors(tmp_path / side / "model.safetensors", [TensorBytes("embed.weight", "F32", (2, 2), data)])
    report = run(tmp_path / "a", tmp_path / "b")
    assert [t.status for t in report.tensors] == ["changed"]
    assert report.main_stack is None
    assert report.layers_changed() == []
    summary = to_json(report)["summary"]
    assert summary["layers_changed"] == [] and "layers" not in summary["text"]


def test_added_removed_and_retyped(tmp_path):
    norm = read_tensor(BASE, "model.norm.weight")
    other = make_variant(
        tmp_path / "v",
        drop=("model.layers.7.mlp.up_proj.weight",),
        add={"model.layers.7.extra.weight": ("model-00002-of-00002.safetensors", np.ones((4, 4)))},
        retype={"model.norm.weight": ("F32", norm)},
    )
    report = run(BASE, other)
    status = {t.name: t.status for t in report.tensors if t.status != "identical"}
    assert status == {
        "model.layers.7.mlp.up_proj.weight": "removed",
        "model.layers.7.extra.weight": "added",
        "model.norm.weight": "retyped",
    }
    tensors = by_name(report)
    assert tensors["model.norm.weight"].base.dtype == "BF16"
    assert tensors["model.norm.weight"].other.dtype == "F32"
    assert tensors["model.layers.7.extra.weight"].base is None
    assert report.layers_changed() == [7]
    assert report.shards[1].status == "changed"


def test_shard_added_and_removed(tmp_path):
    other = shutil.copytree(BASE, tmp_path / "renamed")
    old, new = "model-00002-of-00002.safetensors", "model-extra.safetensors"
    (other / old).rename(other / new)
    index_path = other / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = {k: (new if v == old else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    report = run(BASE, other)
    assert {s.name: s.status for s in report.shards} == {
        "model-00001-of-00002.safetensors": "identical",
        old: "removed",
        new: "added",
    }
    assert {t.status for t in report.tensors} == {"identical"}
    assert not report.identical  # the files differ even though every tensor matches


def test_header_only_with_reordered_tensors(tmp_path):
    other = make_variant(tmp_path / "meta", shard_metadata={"model-00001-of-00002.safetensors": {"format": "np"}})
    shard = other / "model-00002-of-00002.safetensors"
    from surgeon.format.safetensors import TensorBytes, read_header, write_safetensors

    header = read_header(shard)
    data = shard.read_bytes()
    reordered = [
        TensorBytes(n, i.dtype.name, i.shape, data[i.start : i.end]) for n, i in reversed(header.tensors.items())
    ]
    write_safetensors(shard, reordered, header.metadata)
    shards = {s.name: s for s in run(BASE, other).shards}
    first, second = shards["model-00001-of-00002.safetensors"], shards["model-00002-of-00002.safetensors"]
    assert first.status == "header-only" and first.header_differences == ["__metadata__.format changed"]
    assert second.status == "header-only"
    assert "data_offsets" in second.header_differences


def test_full_attention_geometry_in_head_view(tmp_path):
    # Layer 5 is full attention: head_dim 16, 2 kv heads, no v_proj (attention_k_eq_v).
    q = read_tensor(BASE, "model.layers.5.self_attn.q_proj.weight")
    k = read_tensor(BASE, "model.layers.5.self_attn.k_proj.weight")
    q[3 * 16 : 4 * 16] = 0
    k[16:32] *= 2
    other = make_variant(
        tmp_path / "full",
        replace={"model.layers.5.self_attn.q_proj.weight": q, "model.layers.5.self_attn.k_proj.weight": k},
    )
    tensors = by_name(run(BASE, other))
    q_heads = tensors["model.layers.5.self_attn.q_proj.weight"].heads
    assert (q_heads.num_heads, q_heads.head_dim) == (8, 16)
    assert q_heads.heads_with("zeroed") == [3]
    k_heads = tensors["model.layers.5.self_attn.k_proj.weight"].heads
    assert (k_heads.num_heads, k_heads.head_dim) == (2, 16)
    assert k_heads.statuses == ["unchanged", "changed"]
    # o_proj is untouched, so head 3 still attends (uniformly): flagged on q_proj.
    assert q_heads.uniform_attention == [3]


def test_uniform_attention_when_o_proj_changed_but_not_zeroed(tmp_path):
    q = read_tensor(BASE, "model.layers.1.self_attn.q_proj.weight")
    o = read_tensor(BASE, "model.layers.1.self_attn.o_proj.weight")
    q[0:8] = 0
    o[:, 8:16] = 0  # head 1 removed properly; head 0 only has its queries zeroed
    other = make_variant(
        tmp_path / "u",
        replace={"model.layers.1.self_attn.q_proj.weight": q, "model.layers.1.self_attn.o_proj.weight": o},
    )
    report = run(BASE, other)
    q_heads = by_name(report)["model.layers.1.self_attn.q_proj.weight"].heads
    assert q_heads.uniform_attention == [0]
    assert to_json(report)["summary"]["uniform_attention"] == [
        {"tensor": "model.layers.1.self_attn.q_proj.weight", "layer": 1, "heads": [0]}
    ]


def test_no_hash_agrees_with_hashing(tmp_path):
    norm = read_tensor(BASE, "model.norm.weight")
    other = make_variant(
        tmp_path / "v",
        replace={"model.layers.6.mlp.down_proj.weight": read_tensor(BASE, "model.layers.6.mlp.down_proj.weight") * 2},
        retype={"model.norm.weight": ("F32", norm)},
        shard_metadata={"model-00001-of-00002.safetensors": {"note": "x"}},
    )
    hashed, unhashed = run(BASE, other), run(BASE, other, hash=False)
    assert [(t.name, t.status) for t in hashed.tensors] == [(t.name, t.status) for t in unhashed.tensors]
    assert [(s.name, s.status) for s in hashed.shards] == [(s.name, s.status) for s in unhashed.shards]
    assert all(t.other is None or t.other.sha256 is None for t in unhashed.tensors)
    assert {s.name: s.status for s in unhashed.shards}["model-00001-of-00002.safetensors"] == "header-only"


def test_family_rows_group_layers():
    rows = {(r.family): r for r in family_rows(run(BASE, PRUNED))}
    q = rows["self_attn.q_proj.weight"]
    assert q.layers_changed == [0, 1, 2, 3] and q.layers_unchanged == [4, 5, 6, 7]
    assert rows["self_attn.v_proj.weight"].layers_unchanged == [0, 1, 2, 3, 4, 6]
    assert rows["model.embed_tokens.weight"].statuses == {"identical": 1}


def test_without_stats_there_are_no_heads():
    report = run(BASE, PRUNED, stats=False)
    assert all(t.stats is None and t.heads is None for t in report.tensors)
    assert report.layers_changed() == [0, 1, 2, 3]


def test_a_changed_config_alone_makes_checkpoints_differ(tmp_path):
    other = shutil.copytree(BASE, tmp_path / "cfg")
    config = json.loads((other / "config.json").read_text())
    config["num_attention_heads_note"] = "edited"
    (other / "config.json").write_text(json.dumps(config))
    report = run(BASE, other)
    assert {t.status for t in report.tensors} == {"identical"}
    assert not report.identical
    assert {f.name: f.status for f in report.files}["config.json"] == "changed"
    from surgeon.diff.report import summary_line

    assert summary_line(report).endswith("files: config.json changed")


def test_side_files_can_be_left_to_the_caller(tmp_path):
    """verify checks side files against its manifest: its diff need not hash them again."""
    base, pruned = open_checkpoint(BASE), open_checkpoint(PRUNED)
    assert [f.name for f in diff_checkpoints(base, pruned, DiffOptions()).files] == [
        "config.json",
        "model.safetensors.index.json",
    ]
    assert diff_checkpoints(base, pruned, DiffOptions(files=False)).files == []


def test_two_single_files_are_one_pair_whatever_their_names(tmp_path):
    """`diff a.safetensors b.safetensors` compares a with b: one shard, not one added and one
    removed; and not the files of the folders they sit in (a config beside each differs)."""
    from click.testing import CliRunner

    from surgeon.cli.main import main
    from surgeon.diff.render_markdown import render_markdown
    from surgeon.diff.report import summary_line

    shard = "model-00001-of-00002.safetensors"
    for side, source in (("a", BASE), ("b", PRUNED)):
        (tmp_path / side).mkdir()
        shutil.copy(source / shard, tmp_path / side / f"{side}.safetensors")
        (tmp_path / side / "config.json").write_text(json.dumps({"side": side}))
    a, b = tmp_path / "a" / "a.safetensors", tmp_path / "b" / "b.safetensors"
    report = run(a, b)
    assert [(s.name, s.other_name, s.status) for s in report.shards] == [("a.safetensors", "b.safetensors", "changed")]
    assert report.files == [] and report.shards[0].tensors_differing == 8
    assert summary_line(report).endswith("shards: 1 changed of 1")
    card = render_markdown(report)
    assert "- `a.safetensors → b.safetensors`: differs (L0-3 `o_proj`, `q_proj`; 8 of 57 tensors)." in card
    assert f"| `b.safetensors` | this model | `{report.shards[0].sha256[1]}` |" in card
    assert f"| `a.safetensors` | base | `{report.shards[0].sha256[0]}` |" in card
    shutil.copy(a, tmp_path / "b" / "same.safetensors")  # the same bytes under another name: identical
    same = CliRunner().invoke(main, ["diff", str(a), str(tmp_path / "b" / "same.safetensors"), "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["shards"][0] | {"sha256": None, "size": None, "sha256_source": None} == {
        "name": "a.safetensors",
        "other_name": "same.safetensors",
        "status": "identical",
        "sha256": None,
        "size": None,
        "tensors": 57,
        "tensors_differing": 0,
        "header_differences": [],
        "sha256_source": None,
    }
    folder_and_file = run(BASE, b)  # a side that is a file: no side files compared either
    assert folder_and_file.files == []
