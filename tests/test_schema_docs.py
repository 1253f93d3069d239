"""Each JSON format's page in docs/ against real output on the bundled demo pair.

A page lists its fields as key paths in the first column of its `| field | type | meaning |`
tables (notation in docs/json-schemas.md: `a.b`, `a[].b`, `a.*.b`). A key in the output
that its page does not list fails (a field added, renamed or moved without the page), and
so does a field on the page that no run here produces (a field removed, or a page that
describes what is not there), unless NOT_RUN says why it cannot be produced here.

Every command runs in-process on the tiny demo model, with short canaries (two prompts, four
tokens) and evals (64 to 96 tokens): 50 s in all on 2 cores shared with a load of 7, most
of it the prune, the salvage searches and the canary.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_TEXT
from tests.helpers import ROOT

DOCS = ROOT / "docs"
PAGES = {
    "surgeon.diff/1": "diff-json.md",
    "surgeon.prune_manifest/1": "prune-manifest.md",
    "surgeon.canary/2": "canary-json.md",
    "surgeon.verify/1": "verify-json.md",
    "surgeon.inspect/1": "inspect-json.md",
    "surgeon.eval/1": "eval-json.md",
    "surgeon.origin/1": "origin-json.md",  # run on GGUF fixtures: tests/origin/test_origin.py
}
# Fields on a page that no run here produces, and why. Each must still be on its page.
NOT_RUN = {
    # the demo pairs have no head with zero q rows and live o columns: tests/diff/test_head_scan.py
    "surgeon.diff/1": {
        "summary.uniform_attention[].tensor",
        "summary.uniform_attention[].layer",
        "summary.uniform_attention[].heads",
        # a reshaped pair: tests/diff/test_reshape_diff.py checks these against its output
        "summary.tensors.reshaped",
        "tensors[].heads.removed",
        "reshape",
        "reshape.manifest",
        "reshape.notes",
        "reshape.layers[]",
        "reshape.layers[].stack",
        "reshape.layers[].layer",
        "reshape.layers[].source",
        "reshape.layers[].head_dim",
        "reshape.layers[].num_heads",
        "reshape.layers[].num_kv_heads",
        "reshape.layers[].removed_heads",
        "reshape.layers[].kept_heads",
        "reshape.layers[].removed_kv_heads",
        "reshape.layers[].kept_kv_heads",
        "reshape.layers[].note",
    },
    # --calib-dataset needs the datasets package and a dataset in the local cache
    "surgeon.prune_manifest/1": {
        "calibration.config",
        "calibration.split",
        "calibration.fingerprint",
        "calibration.rows",
        # written by surgeon before base.kind; still read (verify, salvage), never written
        "base.path",
        "salvage.base.path",
        "salvage.candidate.path",
        # a base whose side file links out of its folder or is too large: tests/format/test_writer.py
        "written.skipped_files.*",
    },
}
SHORT_CANARY = ["--max-new-tokens", "4", "--device", "cpu"]
SHORT_EVAL = ["--eval-text", str(DEMO_TEXT), "--eval-tokens", "64", "--device", "cpu"]
TABLE_HEADER = re.compile(r"^\|\s*field\s*\|\s*type\s*\|\s*meaning\s*\|\s*$")


# ---------- the pages and the output, as key paths ----------


# Where a page goes on to another schema's fields: diff-json.md ends with the --download
# match's own schema, surgeon.diff-hub-match/1, which no run here produces.
PAGE_ENDS = {"diff-json.md": "## `surgeon diff --download --json`"}


def page_fields(page: str) -> set[str]:
    """The key paths in the first column of the page's field tables (of its own schema)."""
    fields, in_table = set(), False
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        if page in PAGE_ENDS and line.startswith(PAGE_ENDS[page]):
            break
        if TABLE_HEADER.match(line):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and not line.startswith("|---"):
            fields.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return fields


def with_parents(fields: set[str]) -> set[str]:
    """Each path and the paths it is under: `a[].b.*` gives `a`, `a[]`, `a[].b`, `a[].b.*`."""
    out = set()
    for field in fields:
        cuts = [m.start() for m in re.finditer(r"\.|\[\]", field)] + [len(field)]
        out.update(field[:cut] for cut in cuts if cut)
    return out


def key_paths(value, documented: set[str], path: str = "", nested: list | None = None) -> set[str]:
    """The key paths in `value`. An object the page lists as `path.*` has data for keys
    (its entries are walked only where the page lists fields below them); a list is walked
    where the page lists `path[]`; an object with a `schema` of its own inside the output
    is not walked but added to `nested`, for its own page."""
    found: set[str] = set()
    if isinstance(value, dict):
        if path and isinstance(value.get("schema"), str) and value["schema"].startswith("surgeon."):
            if nested is not None:
                nested.append(value)
            return found
        entries = f"{path}.*" if path and f"{path}.*" in documented else None
        below = entries is not None and any(f.startswith((f"{entries}.", f"{entries}[]")) for f in documented)
        for key, child in value.items():
            child_path = entries or (f"{path}.{key}" if path else key)
            found.add(child_path)
            if entries is None or below:
                found |= key_paths(child, documented, child_path, nested)
    elif isinstance(value, list) and f"{path}[]" in documented:
        found.add(f"{path}[]")
        for item in value:
            found |= key_paths(item, documented, f"{path}[]", nested)
    return found


def drift(schema: str, outputs: list[dict]) -> tuple[set[str], set[str]]:
    """(keys in the output not on the page, fields on the page in no output)."""
    documented = with_parents(page_fields(PAGES[schema]))
    seen: set[str] = set()
    for output in outputs:
        assert output["schema"] == schema
        seen |= key_paths(output, documented)
    not_run = NOT_RUN.get(schema, set())
    return seen - documented, documented - with_parents(seen) - with_parents(not_run)


def nested_reports(value, top: bool = True) -> list[dict]:
    """The objects with a `schema` of their own inside `value` (a manifest's canary reports)."""
    if isinstance(value, dict) and not top and isinstance(value.get("schema"), str):
        return [value]
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [report for child in children for report in nested_reports(child, top=False)]


def assert_matches_page(schema: str, outputs: list[dict]) -> None:
    assert outputs, "no output to compare"
    undocumented, absent = drift(schema, outputs)
    page = f"docs/{PAGES[schema]}"
    assert not undocumented, f"{page} does not list {sorted(undocumented)}"
    assert not absent, f"{page} lists {sorted(absent)}, which no output here has"


def run(*args: str, codes: tuple[int, ...] = (0,)) -> dict:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code in codes, result.output
    return json.loads(result.stdout)


# ---------- the runs ----------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder, and caches of this module's own (the per-test ones come later)."""
    folder = tmp_path_factory.mktemp("schemas")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SURGEON_CACHE_DIR", str(folder / "hash-cache"))
        env.setenv("SURGEON_CANARY_CACHE", str(folder / "canary-cache"))
        env.setenv("HF_HUB_OFFLINE", "1")
        (folder / "prompts.txt").write_text("The capital of France is\nWater boils at\n")  # two of the demo's
        yield folder


@pytest.fixture(scope="module")
def pruned(workspace):
    """Layers 0-1 of the demo model pruned and measured (--eval): (folder, printed manifest)."""
    out = workspace / "pruned"
    short = ["--calib-tokens", "512", "--sample-tokens", "128"]  # a smaller run, the same keys
    manifest = run("prune", DEMO_MODEL, "-o", out, "--layers", "0-1", *short, "-q", "--eval", *SHORT_EVAL, "--json")
    return out, manifest


@pytest.fixture(scope="module")
def salvaged(workspace, pruned):
    """The manifests of every kind of salvage: --keep of a surgeon candidate and of one whose
    manifest surgeon did not write, --auto by the canary, --auto by a quality budget. The
    searches run on the prune above: two changed layers, so a few canaries and evals each."""
    foreign = shutil.copytree(DEMO_CANDIDATE, workspace / "foreign")
    (foreign / "prune_manifest.json").write_text(json.dumps({"tool": "elsewhere", "heads": {"0": [1]}}))
    canary = ["--prompts", workspace / "prompts.txt", *SHORT_CANARY]
    base = ["--base", DEMO_MODEL]
    # over the budget on its confirming part or not (64 tokens), the same keys: exit 0 either way
    budget = ["--auto", "--max-kl", "0.5", "--allow-over-budget", *SHORT_EVAL, *canary, "--canary"]
    return [
        run("salvage", pruned[0], *base, "--keep", "0", "-o", workspace / "keep", "--json"),
        run("salvage", foreign, *base, "--keep", "1-7", "-o", workspace / "foreign-keep", "--json"),
        run("salvage", pruned[0], *base, "--auto", *canary, "-o", workspace / "auto", "--json"),
        run("salvage", pruned[0], *base, *budget, "-o", workspace / "budget", "--json"),
    ]


@pytest.fixture(scope="module")
def reshaped(workspace, pruned):
    """The demo model masked in every layer as reshape can slice it (sliding layers lose KV
    group 1 whole, full ones a head of each group), with the prune's manifest beside it, reshaped."""
    from tests.prune.test_reshape import mask

    config = json.loads((DEMO_MODEL / "config.json").read_text())
    removed = {i: [3, 7] if kind == "full_attention" else [2, 3] for i, kind in enumerate(config["layer_types"])}
    masked = mask(DEMO_MODEL, workspace / "masked", removed)
    shutil.copy(pruned[0] / "prune_manifest.json", masked / "prune_manifest.json")
    return run("reshape", masked, "-o", workspace / "reshaped", "--json")


# ---------- the pages ----------


def test_the_prune_manifest_page_lists_every_field(pruned, salvaged, reshaped):
    folder, printed = pruned
    assert json.loads((folder / "prune_manifest.json").read_text()) == printed  # --json prints the file
    assert reshaped["reshape"]["num_heads_after"] == 6
    assert_matches_page("surgeon.prune_manifest/1", [printed, *salvaged, reshaped])


def test_the_canary_page_lists_every_field(workspace, salvaged):
    prompts = ["--prompts", workspace / "prompts.txt", *SHORT_CANARY]
    report = run("canary", DEMO_CANDIDATE, "--base", DEMO_MODEL, *prompts, "--json", codes=(0, 3))
    in_manifests = [r for manifest in salvaged for r in nested_reports(manifest)]
    assert len(in_manifests) == 2  # canary_before (--auto) and canary_after (--canary)
    assert_matches_page("surgeon.canary/2", [report, *in_manifests])


def test_the_verify_page_lists_every_field(pruned):
    reports = [
        run("verify", pruned[0], "--base", DEMO_MODEL, "--json"),
        run("verify", DEMO_MODEL, "--json", codes=(1,)),  # no manifest
        run("verify", DEMO_MODEL, "--integrity-only", "--json"),
    ]
    assert [r["verdict"] for r in reports] == ["verified", "not verified", "integrity only"]
    assert_matches_page("surgeon.verify/1", reports)


def test_the_diff_page_lists_every_field(workspace):
    """The demo pair, and the demo model against GGUFs of itself and of its candidate (Q8_0,
    written as llama.cpp's converter writes Gemma 4, its vocabulary trimmed to 500 of 512 rows)."""
    from tests.gguf_fixtures import convert_checkpoint

    quants = {
        name: convert_checkpoint(folder, workspace / f"{name}.gguf", "gemma4", "Q8_0", n_vocab=500)
        for name, folder in (("model", DEMO_MODEL), ("candidate", DEMO_CANDIDATE))
    }
    channels = workspace / "channels"  # MLP channels removed: the `channels` fields
    short = ["--calib-tokens", "512", "--sample-tokens", "128", "-q"]
    run("prune", DEMO_MODEL, "-o", channels, "--layers", "0", "--ffn-frac", "0.25", *short, "--json")
    sliced = workspace / "channels-sliced"  # and sliced out: `tensors[].channels.removed`
    run("prune", DEMO_MODEL, "-o", sliced, "--mode", "reshape", "--ffn-frac", "0.25", *short, "--json")
    reports = [
        run("diff", DEMO_MODEL, DEMO_CANDIDATE, "--json", codes=(1,)),
        run("diff", DEMO_MODEL, quants["model"], "--json"),
        run("diff", DEMO_MODEL, quants["candidate"], "--json", codes=(1,)),
        run("diff", DEMO_MODEL, channels, "--json", codes=(1,)),
        run("diff", DEMO_MODEL, sliced, "--json", codes=(1,)),
    ]
    assert [r["quant"]["made_from"] for r in reports[1:3]] == [True, False]
    assert reports[2]["quant"]["heads_beyond"] and reports[1]["quant"]["transforms"]["vocab-trim"] == 1
    assert_matches_page("surgeon.diff/1", reports)


def test_the_inspect_page_lists_every_field():
    assert_matches_page("surgeon.inspect/1", [run("inspect", DEMO_MODEL, "--json")])


def test_the_eval_page_lists_every_field():
    short = ["--eval-tokens", "96", "--window", "48", "--device", "cpu", "--no-progress"]
    report = run(
        "eval", DEMO_CANDIDATE, "--base", DEMO_MODEL, "--eval-text", DEMO_TEXT, "--layers", "1-7", *short, "--json"
    )
    assert report["plan"] == [1, 2, 3, 4, 5, 6, 7]
    assert_matches_page("surgeon.eval/1", [report])


def test_fields_not_run_here_are_still_on_their_pages():
    for schema, fields in NOT_RUN.items():
        assert fields <= page_fields(PAGES[schema])


def test_each_page_names_its_schema_and_keeps_the_promise():
    for schema, page in PAGES.items():
        text = " ".join((DOCS / page).read_text(encoding="utf-8").split())
        name, version = schema.split("/")
        assert f"schema `{schema}`" in (DOCS / page).read_text(encoding="utf-8").splitlines()[0]
        assert "fields may be added, never renamed or removed" in text
        assert f"`{name}/{int(version) + 1}`" in text  # what a breaking change bumps it to
        assert f"({page})" in (DOCS / "json-schemas.md").read_text(encoding="utf-8")


def test_the_check_finds_a_key_added_and_a_field_removed():
    """The comparison itself can fail: an extra key, and a field the output lost."""
    report = run("verify", DEMO_CANDIDATE, "--base", DEMO_MODEL, "--json")
    assert drift("surgeon.verify/1", [report]) == (set(), set())
    assert drift("surgeon.verify/1", [report | {"extra": {"inner": 1}}])[0] == {"extra", "extra.inner"}
    without = {k: v for k, v in report.items() if k != "claims_checked"}
    assert drift("surgeon.verify/1", [without])[1] == {"claims_checked"}
