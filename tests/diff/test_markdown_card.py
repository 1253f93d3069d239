"""The model card (`surgeon diff --markdown`) as a reader sees it: rendered by a CommonMark
renderer (markdown-it, with GFM tables), with full SHA256s a reader can compare with
`sha256sum`, names as code spans, and no HTML but the card's own collapsed hash table."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from markdown_it import MarkdownIt

from surgeon.cli.main import main
from surgeon.diff.render_markdown import HASHES_CLOSE, HASHES_OPEN
from surgeon.format.safetensors import write_safetensors
from surgeon.text import inert
from tests.helpers import BASE, PRUNED, encode, make_variant

S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
SIDE_FILES = ("config.json", "model.safetensors.index.json")
HOSTILE = [
    "x|y|z",
    "a`b``c",
    "<script>alert(1)</script>",
    "**bold**",
    "new\nline",
    "model.layers.1.<script>x</script>.**w**|`.weight",  # inside the layer stack: shown by its family
]
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def card(*args) -> str:
    result = CliRunner().invoke(main, ["diff", *map(str, args), "--no-cache", "--markdown"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    return result.stdout


def parse(markdown: str):
    return MarkdownIt("commonmark").enable("table").parse(markdown)


def html(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_spans(tokens) -> list[str]:
    return [c.content for t in tokens for c in t.children or [] if c.type == "code_inline"]


def tables(tokens) -> list[list[list[str]]]:
    """Each table as rows of cell texts (the header row first), from the renderer's tokens."""
    found, row = [], None
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            found.append([])
        elif t.type == "tr_open":
            row = []
            found[-1].append(row)
        elif t.type in ("th_open", "td_open"):
            row.append("".join(c.content for c in tokens[i + 1].children or []))
    return found


def assert_only_our_html(tokens) -> None:
    """The only HTML is the collapsed block around the hash table, surgeon's own lines."""
    assert [t.content for t in tokens if t.type == "html_block"] == [
        "\n".join(block) + "\n" for block in (HASHES_OPEN, HASHES_CLOSE)
    ]
    assert not [c for t in tokens for c in t.children or [] if c.type in ("html_inline", "link_open")]


def assert_tables_keep_their_shape(tokens, markdown: str) -> list[list[list[str]]]:
    found = tables(tokens)
    for rows in found:
        assert {len(row) for row in rows} == {len(rows[0])}, rows  # every row has the header's cells
    # one rendered row per source line of a table: no name added a row, or hid one
    assert sum(len(rows) for rows in found) == sum(line.startswith("| ") for line in markdown.splitlines())
    return found


def test_fixture_card_renders_with_full_hashes_from_the_bytes_and_names_as_code():
    markdown = card(BASE, PRUNED)
    tokens = parse(markdown)
    assert_only_our_html(tokens)
    found = assert_tables_keep_their_shape(tokens, markdown)
    assert [rows[0] for rows in found] == [
        ["Tensor", "Layers changed", "Layers unchanged"],
        ["File", "Checkpoint", "SHA256"],
    ]
    # every SHA256, from the real bytes, verbatim as a code span, in the row that names its file
    expected = []
    for name in (S1, S2, *SIDE_FILES):
        this, base = file_sha(PRUNED / name), file_sha(BASE / name)
        expected += [[name, "both", this]] if this == base else [[name, "this model", this], [name, "base", base]]
    assert found[1][1:] == expected
    assert {row[2] for row in expected} <= set(code_spans(tokens))
    assert set(HEX64.findall(markdown)) == {row[2] for row in expected}  # no other hex, no shortened hash
    assert "…" not in markdown.split("## SHA256 evidence")[1]
    # the table sits inside the collapsed block, after the verdicts
    page = html(markdown)
    assert page.index("<details>") < page.index("<table>", page.index("SHA256 evidence")) < page.index("</details>")
    assert "<details open" not in page
    # names as code: __metadata__ is never bold, shards and files are code spans
    assert "<code>__metadata__.surgeon_build</code> added" in page
    assert "<strong>" not in page and "<em>" not in page
    assert {S1, S2, *SIDE_FILES} <= set(code_spans(tokens))
    assert "<code>self_attn.q_proj.weight</code>" in page


def test_hostile_tensor_names_stay_code_and_the_card_keeps_its_shape(tmp_path):
    values = np.arange(4, dtype=np.float32).reshape(2, 2)
    other = make_variant(tmp_path / "hostile", src=PRUNED, add={name: (S1, values) for name in HOSTILE})
    markdown = card(BASE, other)
    tokens = parse(markdown)
    assert_only_our_html(tokens)
    assert_tables_keep_their_shape(tokens, markdown)
    page = html(markdown)
    assert "<script" not in page and "<strong>" not in page and "<em>" not in page
    spans = code_spans(tokens)
    for name in HOSTILE[:-1]:  # outside the layer stack: its own code span, shown as `inert` writes it
        assert inert(name) in spans, name
    assert any(span.endswith("<script>x</script>.**w**|`.weight") for span in spans), spans
    # the hash table still has the real hashes of the rewritten shard and of the untouched one
    found = tables(tokens)[-1]
    assert [S1, "this model", file_sha(other / S1)] in found and [S2, "this model", file_sha(other / S2)] in found


def test_no_hash_card_has_no_hash_table_and_no_html():
    result = CliRunner().invoke(main, ["diff", str(BASE), str(PRUNED), "--no-cache", "--no-hash", "--markdown"])
    assert result.exit_code == 1, result.output
    tokens = parse(result.stdout)
    assert not [t for t in tokens if t.type == "html_block"]
    assert len(tables(tokens)) == 1 and not HEX64.search(result.stdout)
    assert "No SHA256 was computed" in result.stdout


def test_an_added_shard_has_one_row_its_own_hash(tmp_path):
    extra = "model-extra.safetensors"
    other = make_variant(tmp_path / "grown")
    write_safetensors(other / extra, [encode("extra.weight", "BF16", np.ones((2, 2), np.float32))], None)
    index = json.loads((other / SIDE_FILES[1]).read_text())
    index["weight_map"]["extra.weight"] = extra
    (other / SIDE_FILES[1]).write_text(json.dumps(index))
    markdown = card(BASE, other)
    tokens = parse(markdown)
    assert_tables_keep_their_shape(tokens, markdown)
    rows = [row for row in tables(tokens)[-1] if row[0] == extra]
    assert rows == [[extra, "this model", file_sha(other / extra)]]
    assert f"- `{extra}`: added" in markdown


def test_a_shard_that_lost_tensors_counts_them_in_its_total(tmp_path):
    """The card said "57 of 1 tensors" of a shard that kept one tensor (changed) of 57 (56
    removed): the total counted the candidate's side only."""
    from surgeon.format.checkpoint import open_checkpoint
    from tests.helpers import read_tensor

    names = [n for n, t in open_checkpoint(BASE).tensors.items() if t.file == S1]
    kept = names[0]
    other = make_variant(tmp_path / "other", replace={kept: read_tensor(BASE, kept) + 1}, drop=tuple(names[1:]))
    markdown = card(BASE, other)
    counts = re.findall(r"(\d+) of (\d+) tensors", markdown)
    assert (str(len(names)), str(len(names))) in counts and all(int(a) <= int(b) for a, b in counts), counts
    result = CliRunner().invoke(main, ["diff", str(BASE), str(other), "--no-cache", "--json"])
    shard = next(s for s in json.loads(result.stdout)["shards"] if s["name"] == S1)
    assert (shard["tensors"], shard["tensors_differing"]) == (len(names), len(names))


def test_the_card_carries_the_ignored_weights_note(tmp_path):
    """Issue 18 re-test: diff and inspect say which weight files transformers ignores; the
    --markdown card did not. One line per side, inert Markdown."""
    import shutil

    from tests.helpers import BASE, PRUNED, merged_file

    folder = tmp_path / "two"
    folder.mkdir()
    merged_file(PRUNED, folder / "model.safetensors")
    shutil.copy(BASE / "config.json", folder / "config.json")
    merged_file(BASE, folder / "zz_[x](y).safetensors")
    result = CliRunner().invoke(main, ["diff", str(BASE), str(folder), "--markdown", "--no-cache"])
    notes = [line for line in result.stdout.splitlines() if line.startswith("- Note")]
    assert len(notes) == 1, result.output
    html = MarkdownIt().render(notes[0])
    assert "<a" not in html and "Note (other): model.safetensors is read" in html
    assert "zz_[x](y).safetensors is ignored" in html
