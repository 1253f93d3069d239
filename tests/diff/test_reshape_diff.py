"""`surgeon diff` of a reshaped pair (issue 21.5): the demo model against its `prune --mode
reshape` output. The sliced projections are `reshaped`, the removed heads per layer are the
manifest's, every kept head's q/k/v rows are the base's and o_proj's kept columns are healed;
without the manifest the same heads are found by matching rows, and a head whose rows changed
leaves the layer's heads unestablished, said in words, not guessed."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from click.testing import CliRunner
from rich.console import Console

from surgeon.cli.main import main
from surgeon.demo import DEMO_MODEL
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.render_markdown import render_markdown
from surgeon.diff.render_terminal import render_terminal
from surgeon.format.checkpoint import open_checkpoint
from tests.test_schema_docs import PAGES, key_paths, page_fields, with_parents

SHORT = ["--calib-tokens", "512", "--sample-tokens", "128", "-q"]


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory):
    """(the reshaped folder, its manifest's reshape layers), by the CLI with a small calibration."""
    out = tmp_path_factory.mktemp("reshape-diff") / "out"
    result = CliRunner().invoke(
        main, ["prune", str(DEMO_MODEL), "-o", str(out), "--mode", "reshape", "--prune-frac", "0.25", *SHORT]
    )
    assert result.exit_code == 0, result.output
    layers = json.loads((out / "prune_manifest.json").read_text())["reshape"]["layers"]
    return out, {layer["layer"]: layer for layer in layers}


def diff_json(other, *extra) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["diff", str(DEMO_MODEL), str(other), "--json", "--no-cache", *extra])
    return result.exit_code, json.loads(result.stdout)


def without_manifest(reshaped, tmp_path):
    folder = tmp_path / "no-manifest"
    shutil.copytree(reshaped[0], folder)
    (folder / "prune_manifest.json").unlink()
    return folder


def check_layers(report: dict, manifest: dict, source: str) -> None:
    """Each layer names the manifest's heads; each kept q/k/v head is the base's, o_proj healed."""
    layers = {layer["layer"]: layer for layer in report["reshape"]["layers"]}
    assert layers.keys() == manifest.keys()
    for number, claim in manifest.items():
        found = layers[number]
        assert found["source"] == source
        assert found["removed_heads"] == claim["removed_heads"]
        assert found["kept_heads"] == claim["kept_heads"]
        assert found["kept_kv_heads"] == claim["kept_kv_heads"]
        assert found["head_dim"] == claim["head_dim"]
    for t in report["tensors"]:
        if t["status"] != "reshaped":
            continue
        claim = manifest[t["layer"]]
        heads = t["heads"]
        query = heads["projection"] in ("q_proj", "o_proj")
        kept = claim["kept_heads"] if query else claim["kept_kv_heads"]
        assert heads["removed"] == sorted(set(range(heads["num_heads"])) - set(kept)), t["name"]
        if heads["projection"] == "o_proj":
            assert heads["changed"] == kept and t["stats"]["elements_changed"] > 0  # healed
        else:
            assert heads["unchanged"] == kept and t["stats"]["max_abs_delta"] == 0.0, t["name"]


def test_reshaped_pair_names_the_removed_heads(reshaped):
    out, manifest = reshaped
    code, report = diff_json(out)
    assert code == 1
    assert report["reshape"]["manifest"] is True
    check_layers(report, manifest, "manifest")
    counts = report["summary"]["tensors"]
    assert counts["reshaped"] == 28 and counts["retyped"] == 0  # 8 q, 8 o, 6 k, 6 v (two k_eq_v layers keep k)
    assert report["summary"]["layers_changed"] == sorted(manifest)
    families = {f["family"]: f["statuses"] for f in report["families"]}
    assert families["self_attn.k_proj.weight"] == {"identical": 2, "reshaped": 6}


def test_reshape_keys_are_documented(reshaped, tmp_path):
    """Every key of both reshaped outputs is on docs/diff-json.md, and every reshape field of
    the page (left out of test_schema_docs' runs) is in them."""
    documented = with_parents(page_fields(PAGES["surgeon.diff/1"]))
    seen = set()
    for folder in (reshaped[0], without_manifest(reshaped, tmp_path)):
        seen |= key_paths(diff_json(folder)[1], documented)
    assert not seen - documented
    reshape_fields = {f for f in documented if f.startswith("reshape") or f.endswith((".reshaped", "heads.removed"))}
    assert reshape_fields <= with_parents(seen)


def test_without_the_manifest_heads_are_matched_by_rows(reshaped, tmp_path):
    code, report = diff_json(without_manifest(reshaped, tmp_path))
    assert code == 1
    assert report["reshape"]["manifest"] is False
    check_layers(report, reshaped[1], "rows")


def test_a_changed_kept_head_is_not_guessed(reshaped, tmp_path):
    """One kept q head's rows edited, no manifest: that layer's removed heads are not
    established (null, a note), the others still are."""
    folder = without_manifest(reshaped, tmp_path)
    manifest = reshaped[1]
    name = "model.layers.3.self_attn.q_proj.weight"
    info = open_checkpoint(str(folder)).tensors[name]
    row_bytes = info.nbytes // info.shape[0]
    with open(folder / info.file, "r+b") as f:  # one byte of kept head 1's first row, in place
        f.seek(info.start + manifest[3]["head_dim"] * row_bytes)
        byte = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([byte ^ 0x01]))
    code, report = diff_json(folder)
    assert code == 1
    layers = {layer["layer"]: layer for layer in report["reshape"]["layers"]}
    assert layers[3]["removed_heads"] is None and "not established" in layers[3]["note"]
    assert layers[2]["removed_heads"] == manifest[2]["removed_heads"]
    q = next(t for t in report["tensors"] if t["name"] == name)
    assert q["status"] == "reshaped" and q["heads"] is None


def test_manifest_that_does_not_fit_falls_back_to_rows(reshaped, tmp_path):
    """A manifest whose claim is not what the shapes allow is not believed: the rows decide."""
    folder = tmp_path / "wrong"
    shutil.copytree(reshaped[0], folder)
    path = folder / "prune_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["reshape"]["layers"][0]["kept_heads"] = [0, 1, 2]  # 3 heads where the rows hold 6
    path.write_text(json.dumps(manifest))
    report = diff_json(folder)[1]
    layer = report["reshape"]["layers"][0]
    assert layer["source"] == "rows" and layer["removed_heads"] == reshaped[1][0]["removed_heads"]


def test_terminal_at_80_columns_and_card(reshaped):
    out, manifest = reshaped
    report = diff_checkpoints(open_checkpoint(str(DEMO_MODEL)), open_checkpoint(str(out)), DiffOptions(cache_dir=None))
    buffer = io.StringIO()
    render_terminal(report, Console(file=buffer, width=80, highlight=False))
    text = buffer.getvalue()
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    assert "28 reshaped" in text and "retyped" not in text
    table = text.split("Reshaped attention", 1)[1]
    for number, claim in manifest.items():
        removed = ", ".join(map(str, claim["removed_heads"]))
        assert any(
            line.split("│")[1:4] and line.split("│")[1].strip() == str(number) and removed in line
            for line in table.splitlines()
            if line.startswith("│")
        )
    card = render_markdown(report)
    for number, claim in manifest.items():
        assert f"- L{number}: heads 8 → 6, removed {', '.join(map(str, claim['removed_heads']))};" in card
    assert "kept q/k/v rows identical, `o_proj` changed" in card


def test_no_stats_still_names_heads(reshaped):
    code, report = diff_json(reshaped[0], "--no-stats")
    assert code == 1
    q = next(t for t in report["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert q["status"] == "reshaped" and q["stats"] is None and q["heads"]["removed"] == reshaped[1][0]["removed_heads"]
