"""verify on a prune_manifest.json that surgeon did not write: the OmniMergeKit recipe's
claims are checked against the bytes, an unknown format is never "verified".

The candidate is built here from the committed tiny Gemma 4 fixture (8 layers, 8 q heads,
4 kv heads; layers 5 and 7 are full-attention with head_dim 16 and 2 kv heads): head 2's
q_proj rows and o_proj columns zeroed in layers 0-3 only, as the reference card's
checkpoint has its edits in L0-L3 while its manifest lists every layer.
"""

from __future__ import annotations

import json
import shutil

import pytest

from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.foreign_manifest import NEEDS_BASE, UNKNOWN, verify_foreign
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.manifest import is_surgeon_manifest
from surgeon.recover.verify import VerifyReport
from tests.helpers import BASE, make_variant, read_tensor

HEAD, HEAD_DIM, N_Q = 2, 8, 8
WRITTEN = range(4)
LAYER_TYPES = json.loads((BASE / "config.json").read_text())["layer_types"]
KV_HEADS = {i: 2 if t == "full_attention" else 4 for i, t in enumerate(LAYER_TYPES)}
CARD_LINE = "manifest lists 8 pruned layers (0-7); weights differ from base in 4 (0-3); 4-7 are byte-identical to base"


def omk_manifest(layers, removed=(HEAD,), **fields) -> dict:
    """A manifest with the recipe's field names and value shapes (prune_local_heal.py):
    pruned_layers as [layer, layer_type] pairs, keep_*_per_layer keyed by the layer as a
    string with sorted lists of kept head numbers, mask mode keeping every kv head."""
    manifest = {
        "source": "google/gemma-4-31B-it",
        "prune_frac": 0.125,
        "n_drop_per_layer": len(removed),
        "prune_mode": "mask",
        "resolved_mode": "mask",
        "full_coverage": len(layers) == len(LAYER_TYPES),
        "drop_kv_groups": False,
        "heal": "lstsq",
        "ridge_rel": 0.01,
        "pruned_layers": [[i, LAYER_TYPES[i]] for i in layers],
        "refit_stats": {str(i): {"kept": 56, "in": 64, "lam": 1e-3, "rel_resid": 0.011} for i in layers},
        "canary_result": None,
        "canary_failed": False,
        "keep_q_per_layer": {str(i): [h for h in range(N_Q) if h not in removed] for i in layers},
        "keep_kv_per_layer": {str(i): list(range(KV_HEADS[i])) for i in layers},
    }
    return manifest | fields


def new_report():
    return VerifyReport("candidate", "base", True)


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    rows = slice(HEAD * HEAD_DIM, (HEAD + 1) * HEAD_DIM)
    replace = {}
    for i in WRITTEN:
        q_name, o_name = f"model.layers.{i}.self_attn.q_proj.weight", f"model.layers.{i}.self_attn.o_proj.weight"
        q, o = read_tensor(BASE, q_name), read_tensor(BASE, o_name)
        assert q[rows].any() and o[:, rows].any()  # the base's head is live, so zeroing it shows
        q[rows], o[:, rows] = 0, 0
        replace |= {q_name: q, o_name: o}
    return make_variant(tmp_path_factory.mktemp("omk") / "candidate", replace=replace)


@pytest.fixture(scope="module")
def diff(candidate):
    return diff_checkpoints(open_checkpoint(BASE), open_checkpoint(candidate), DiffOptions(cache_dir=None))


def check(manifest, diff, base_given=True):
    report = new_report()
    verify_foreign(manifest, report, diff, base_given)
    return report


def test_the_cards_claim_of_every_layer_is_caught(diff):
    report = check(omk_manifest(range(8)), diff)
    # One line for the layers; the head claims on the 4 unwritten layers are part of it.
    assert report.discrepancies == [CARD_LINE]
    assert any("keep_q_per_layer holds in layers 0-3" in c for c in report.checks)


def test_an_honest_manifest_passes(diff):
    report = check(omk_manifest(WRITTEN), diff)
    assert report.discrepancies == []
    assert "the 4 layers the OmniMergeKit manifest lists as pruned (0-3)" in report.checks[0]
    assert any("keep_q_per_layer holds in layers 0-3" in c and "o_proj columns" in c for c in report.checks)
    assert any("keep_kv_per_layer keeps every head in layers 0-3" in c for c in report.checks)
    assert any("records no SHA256s" in n for n in report.notes)


def test_a_kept_head_that_is_zeroed_is_a_discrepancy(diff):
    report = check(omk_manifest(WRITTEN, removed=(5,)), diff)
    assert report.discrepancies == [
        "keep_q_per_layer lists heads as kept that are all zero: layers 0-3: head 2 (q_proj rows, o_proj columns)",
        "heads keep_q_per_layer leaves out (removed) are not zeroed: layers 0-3: head 5 (q_proj rows, o_proj columns)",
    ]


def test_a_kv_head_claimed_removed_but_untouched(diff):
    manifest = omk_manifest(WRITTEN)
    manifest["keep_kv_per_layer"]["1"] = [0, 1, 3]  # GQA: layer 1 has 4 kv heads
    report = check(manifest, diff)
    assert report.discrepancies == [
        "heads keep_kv_per_layer leaves out (removed) are not zeroed: layer 1: "
        "k_proj rows, v_proj rows: byte-identical to base"
    ]


def test_counts_are_accepted_for_kept_heads(diff):
    manifest = omk_manifest(WRITTEN)
    manifest["keep_q_per_layer"] = {str(i): N_Q - 1 for i in WRITTEN}
    assert check(manifest, diff).discrepancies == []
    manifest["keep_q_per_layer"]["3"] = N_Q - 2
    assert check(manifest, diff).discrepancies == [
        "keep_q_per_layer counts kept heads that the weights do not have: layer 3: "
        "q_proj rows, o_proj columns: 6 claimed, 7 non-zero"
    ]


def test_a_failed_canary_is_a_note(diff):
    report = check(omk_manifest(WRITTEN, canary_failed=True), diff)
    assert report.discrepancies == []
    assert "the manifest records that the canary failed (canary_failed: true)" in report.notes


def test_a_reshape_mode_skips_the_head_checks_and_says_why(diff):
    report = check(omk_manifest(range(8), prune_mode="group-aware", resolved_mode="group-aware"), diff)
    assert report.discrepancies == [CARD_LINE]
    assert any(n.startswith("head claims not checked: prune_mode 'group-aware' is not mask mode") for n in report.notes)
    assert not any("holds in" in c for c in report.checks)


def test_without_a_base_nothing_is_checked(diff):
    report = check(omk_manifest(WRITTEN, canary_failed=True), None, base_given=False)
    assert report.discrepancies == [NEEDS_BASE + " (it names its source as 'google/gemma-4-31B-it')"]
    assert any("canary failed" in n for n in report.notes)
    assert report.checks == []


def test_an_unknown_foreign_manifest_is_never_verified(diff):
    for manifest in ({"layers": [0, 1], "note": "trust me"}, {}, {"pruned_layers": [0]}):
        report = check(manifest, diff)
        assert report.discrepancies == [UNKNOWN] and report.checks == []
    assert is_surgeon_manifest({"schema": "surgeon.prune_manifest/1"})
    assert not is_surgeon_manifest({"schema": "omnimergekit/1"})
    assert not is_surgeon_manifest({"schema": None, "pruned_layers": []})


MALFORMED = [
    {"pruned_layers": "all"},
    {"pruned_layers": [0, -1]},
    {"pruned_layers": [True]},
    {"pruned_layers": [[]]},
    {"pruned_layers": [None]},
    {"keep_q_per_layer": [[0, 1]]},
    {"keep_q_per_layer": {"zero": [0]}},
    {"keep_q_per_layer": {"٣": [0]}},  # a digit to int(), not a layer number here
    {"keep_q_per_layer": {"0": "0-6"}},
    {"keep_q_per_layer": {"0": [0, 1.5]}},
    {"keep_kv_per_layer": {"0": None}},
    {"canary_failed": "yes"},
    {"prune_mode": 5},
    {"drop_kv_groups": "no"},
    {"first_kv_shared_idx": -3},
    {"pruned_layers": list(range(70_000))},
]


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda bad: json.dumps(bad)[:40])
def test_malformed_values_give_one_line(diff, bad):
    report = check(omk_manifest(WRITTEN) | bad, diff)
    assert len(report.discrepancies) == 1
    assert report.discrepancies[0].startswith("prune_manifest.json (OmniMergeKit format) is malformed: ")
    assert report.discrepancies[0].endswith(": none of its claims were checked")
    assert report.checks == []


def test_huge_layer_and_head_numbers_are_named_not_allocated(diff):
    manifest = omk_manifest(WRITTEN)
    manifest["pruned_layers"] += [9, 10**12, 10**4000]
    manifest["keep_q_per_layer"]["0"] = [0, 1, 3, 9, 10**15]
    report = check(manifest, diff)
    assert report.discrepancies == [
        "manifest names layer 9 and 2 layer numbers of 10 or more digits that the model does not have "
        "(its layers: 0-7)",
        "keep_q_per_layer names heads the layer does not have: layer 0: heads 9, a number of 10 or more digits "
        "(it has 8)",
    ]


def test_strings_from_the_manifest_stay_inert(diff):
    report = check(omk_manifest(WRITTEN, prune_mode="\x1b[2J[red]x"), diff)
    note = next(n for n in report.notes if n.startswith("head claims not checked"))
    assert "\x1b" not in note and "prune_mode '\\x1b[2J[red]x'" in note
    report = check(omk_manifest(WRITTEN, source="evil\x07\u202e"), None, base_given=False)
    assert "\\x07\\u202e" in report.discrepancies[0] and "\x07" not in report.discrepancies[0]


def test_cli_verify_fails_on_the_cards_lie(candidate, tmp_path):
    from click.testing import CliRunner

    from surgeon.cli.main import main

    lying = shutil.copytree(candidate, tmp_path / "he1")
    (lying / "prune_manifest.json").write_text(json.dumps(omk_manifest(range(8), canary_failed=True), indent=2))
    result = CliRunner().invoke(main, ["verify", str(lying), "--base", str(BASE)], catch_exceptions=False)
    assert result.exit_code == 1
    assert CARD_LINE in " ".join(result.output.split())
    assert "canary failed" in result.output
    result = CliRunner().invoke(main, ["verify", str(lying)], catch_exceptions=False)
    assert result.exit_code == 1 and "name the base" in " ".join(result.output.split())


def test_a_tensor_outside_the_claims_is_a_discrepancy(candidate, diff, tmp_path):
    """Issue 18: the claims are about the heads of the listed layers. An embedding changed, or
    an MLP of a listed layer, is outside them, and "claims hold" was said over it."""
    embed, mlp = "model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"
    replace = {name: read_tensor(BASE, name) * 2 for name in (embed, mlp)}
    changed = make_variant(tmp_path / "changed", src=candidate, replace=replace)
    outside = diff_checkpoints(open_checkpoint(BASE), open_checkpoint(changed), DiffOptions(cache_dir=None))
    report = check(omk_manifest(WRITTEN), outside)
    assert report.discrepancies == [
        "2 tensors outside the manifest's claims (the attention heads of the layers it lists) differ from base: "
        f"{embed} (changed), {mlp} (changed)"
    ]
    assert "no tensor outside the manifest's claims differs from base" in check(omk_manifest(WRITTEN), diff).checks


def test_cli_files_beside_the_weights_are_compared_with_the_base(candidate, tmp_path):
    """Issue 18: "claims hold" was said over an added adapter_model.safetensors and
    chat_template.jinja. As with a surgeon manifest's record, a file a loader could read that
    is added, changed or gone fails; documentation is noted."""
    from click.testing import CliRunner

    from surgeon.cli.main import main

    folder = shutil.copytree(candidate, tmp_path / "extra")
    (folder / "prune_manifest.json").write_text(json.dumps(omk_manifest(WRITTEN), indent=2))
    shutil.copy(folder / "model-00002-of-00002.safetensors", folder / "adapter_model.safetensors")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / "README.md").write_text("# pruned")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"rope_theta": 1.0}))
    base = shutil.copytree(BASE, tmp_path / "base")
    (base / "generation_config.json").write_text('{"do_sample": false}')
    result = CliRunner().invoke(main, ["verify", str(folder), "--base", str(base)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert failed == [
        "FAIL file adapter_model.safetensors: not in the base, and a loader could read it",
        "FAIL file chat_template.jinja: not in the base, and a loader could read it",
        "FAIL file config.json: differs from the base's, and the manifest claims no change to it",
        "FAIL file generation_config.json: in the base but not here, and the manifest claims no change to it",
    ]
    assert "note README.md: not compared with the base (no loader reads it)" in result.output


def test_cli_an_honest_foreign_manifest_holds_but_is_not_verified(candidate, tmp_path):
    """Its claims are proven from the bytes, but it records no hashes: "claims hold", never "verified"."""
    from click.testing import CliRunner

    from surgeon.cli.main import main

    honest = shutil.copytree(candidate, tmp_path / "honest")
    (honest / "prune_manifest.json").write_text(json.dumps(omk_manifest(WRITTEN), indent=2))
    result = CliRunner().invoke(main, ["verify", str(honest), "--base", str(BASE)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("claims hold (manifest not written by surgeon)") and "verified" not in last
    result = CliRunner().invoke(main, ["verify", str(honest), "--base", str(BASE), "--json"], catch_exceptions=False)
    assert json.loads(result.output)["verdict"] == "claims hold (manifest not written by surgeon)"


def _scaled(candidate, tmp_path, name, edit):
    """The candidate with one tensor edited in place, and its diff against the base."""
    changed = make_variant(tmp_path / "edited", src=candidate, replace={name: edit(read_tensor(candidate, name))})
    return diff_checkpoints(open_checkpoint(BASE), open_checkpoint(changed), DiffOptions(cache_dir=None))


def _scale_rows(factor, rows):
    def edit(weight):
        weight[rows] *= factor
        return weight

    return edit


KEPT_Q_ROWS = slice(5 * HEAD_DIM, 6 * HEAD_DIM)  # head 5: kept in layers 0-3


@pytest.mark.parametrize(
    ("proj", "edit", "heads"),
    [
        ("v_proj", _scale_rows(3, slice(None)), "heads 0, 1, 2, 3"),
        ("k_proj", _scale_rows(-1, slice(None)), "heads 0, 1, 2, 3"),
        ("q_proj", _scale_rows(5, KEPT_Q_ROWS), "head 5"),
    ],
)
def test_a_changed_kv_projection_or_kept_head_is_outside_the_claims(candidate, tmp_path, proj, edit, heads):
    """Issue 18 re-test: in mask mode the recipe only zeroes rows; k/v and the kept q heads
    stay the base's bytes. A v_proj x3, a k_proj negated, a kept head's q rows x5 in a listed
    layer were "claims hold"."""
    name = f"model.layers.1.self_attn.{proj}.weight"
    report = check(omk_manifest(WRITTEN), _scaled(candidate, tmp_path, name, edit))
    assert report.discrepancies == [
        "1 tensor outside the manifest's claims (the attention heads of the layers it lists) differs from base: "
        f"{name} ({heads} changed without being zeroed)"
    ]


def test_o_proj_refit_by_the_heal_is_within_the_claims(candidate, tmp_path):
    """The recipe's lstsq heal refits the whole o_proj of a listed layer: not a finding."""
    name = "model.layers.1.self_attn.o_proj.weight"
    report = check(omk_manifest(WRITTEN), _scaled(candidate, tmp_path, name, lambda w: w * 1.5))
    assert report.discrepancies == []
    assert "no tensor outside the manifest's claims differs from base" in report.checks


def test_cli_a_template_in_a_subfolder_fails_against_the_base(candidate, tmp_path):
    """Issue 18 re-test: transformers' tokenizer reads additional_chat_templates/*.jinja;
    "claims hold" was said over one the base does not have. Documentation in a folder is a note."""
    from click.testing import CliRunner

    from surgeon.cli.main import main

    folder = shutil.copytree(candidate, tmp_path / "templates")
    (folder / "prune_manifest.json").write_text(json.dumps(omk_manifest(WRITTEN), indent=2))
    (folder / "images").mkdir()
    (folder / "images" / "chart.png").write_bytes(b"")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "default.jinja").write_text("{{x}}\n")
    result = CliRunner().invoke(main, ["verify", str(folder), "--base", str(BASE)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert failed == ["FAIL file additional_chat_templates/default.jinja: not in the base, and a loader could read it"]
    assert "images/: holds no file a loader reads, not compared with the base" in " ".join(result.output.split())
