"""Strings from files stay inert: a checkpoint whose tensor, shard, file, metadata and config
strings are terminal escapes, Rich markup or Markdown syntax is reported like any other.

Terminal and TUI: control characters shown escaped (`\\x1b`), markup shown literally. Markdown:
no name adds a table cell, starts a line, closes its code span or becomes HTML. JSON: the exact
strings.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from rich.console import Console

from surgeon.cli.main import main
from surgeon.diff.render_markdown import HASHES_CLOSE, HASHES_OPEN
from surgeon.text import inert, inert_lines, markup_safe, md_code, md_text
from tests.helpers import BASE, make_variant

S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
ESC_NAME = "model.layers.0.\x1b[2J\x1b]8;;https://evil\x07x"
LINK_NAME = "[link=https://evil.example]model.layers.0.self_attn.q_proj.weight[/link]"
NAMES = [
    "[/]",
    "[bold red]x[/]",
    LINK_NAME,
    ESC_NAME,
    "a|b",
    "a`b",
    "a\\|b",
    "# heading",
    "- item",
    "> quote",
    "<b>html</b>",
    "new\nline",
    "cr\rx",
    "bidi\u202eevil",
    ":smile:",
    "[$accent]textual",
]
META_KEY, META_VALUE = "k[/]\x1b[31m|`#", "v[bold]\x1b]8;;x\x07|`\n# h"
SHARD = "model-[red]\x1b[31m|x`.safetensors"
SIDE_FILE = "notes[red]\x1b[31m|`.txt"
MODEL_TYPE = "gemma4_text\x1b[2J[/]:smile:"
LAYER_TYPE = "sliding[/]\x1b[31m"
RAW = ("\x1b", "\r", "\x07", "\u202e")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """The tiny base plus tensors with hostile names, hostile metadata, a shard and a side file
    with hostile names, and hostile config values."""
    folder = tmp_path_factory.mktemp("hostile")
    other = make_variant(
        folder / "other",
        add={name: (S1, np.ones(4, np.float32)) for name in NAMES},
        shard_metadata={S1: {META_KEY: META_VALUE}},
    )
    (other / SIDE_FILE).write_text("x")
    (other / S2).rename(other / SHARD)
    index = json.loads((other / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: SHARD if v == S2 else v for k, v in index["weight_map"].items()}
    (other / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((other / "config.json").read_text())
    config["model_type"], config["layer_types"][0] = MODEL_TYPE, LAYER_TYPE
    (other / "config.json").write_text(json.dumps(config))
    return other


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


SGR = re.compile(r"\x1b\[[0-9;]*m")


def assert_inert(out: str) -> None:
    """Nothing raw from a file: only Rich's own colour codes (SGR), no other escape, no CR, bell,
    bidi override or hyperlink."""
    plain = SGR.sub("", out)
    for char in RAW:
        assert char not in plain, f"raw {char!r} in output"
    assert "\U0001f604" not in plain  # :smile: was not turned into an emoji


# --- the terminal ------------------------------------------------------------------------


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_diff_terminal_shows_names_escaped_and_literal(hostile, verbose):
    result = invoke("diff", BASE, hostile, "--no-cache", *verbose)
    assert result.exit_code == 1
    out = result.stdout
    assert_inert(out)
    assert "[/]" in out and "[bold red]x[/]" in out and "[link=https://evil.example]" in out
    assert "\\x1b[2J\\x1b]8;;https://evil\\x07x" in out
    assert "new\\x0aline" in out and "cr\\x0dx" in out and "bidi\\u202eevil" in out and ":smile:" in out
    assert inert(SHARD) in out and inert(SIDE_FILE) in out
    assert "__metadata__.k[/]\\x1b[31m|`# added" in out


def test_render_terminal_on_a_real_terminal_has_no_hyperlink_or_foreign_escape(hostile):
    """Drawn for a colour terminal, the only escapes are Rich's colours."""
    from surgeon.diff.engine import DiffOptions, diff_checkpoints
    from surgeon.diff.inspection import inspect_json
    from surgeon.diff.render_inspection import render_inspect
    from surgeon.diff.render_terminal import render_terminal
    from surgeon.format.checkpoint import open_checkpoint

    report = diff_checkpoints(open_checkpoint(BASE), open_checkpoint(hostile), DiffOptions(cache_dir=None))
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=400)
    render_terminal(report, console, verbose=True)
    render_inspect(inspect_json(open_checkpoint(hostile)), console, verbose=True)
    out = buffer.getvalue()
    assert "\x1b]8;" not in out  # no OSC 8 hyperlink, Rich's [link] nor the name's own
    assert_inert(out)
    assert "[link=https://evil.example]" in SGR.sub("", out)


def test_inspect_terminal_shows_metadata_config_and_names_escaped(hostile):
    result = invoke("inspect", hostile)
    assert result.exit_code == 0
    out = result.stdout
    assert_inert(out)
    assert inert(MODEL_TYPE) in out and inert(LAYER_TYPE) in out
    assert inert(SHARD) in out
    assert f"{inert(META_KEY)}={inert(META_VALUE)}" in out
    verbose = invoke("inspect", hostile, "-v")
    assert verbose.exit_code == 0
    assert_inert(verbose.stdout)
    for name in ("[/]", "[bold red]x[/]", "\\x1b[2J\\x1b]8;;https://evil\\x07x", "new\\x0aline", ":smile:"):
        assert name in verbose.stdout


def test_an_error_quoting_a_path_is_one_inert_line(tmp_path):
    result = invoke("inspect", tmp_path / "missing[/]\x1b[2J\rx")
    assert result.exit_code == 2
    assert_inert(result.stderr)
    assert "missing[/]\\x1b[2J\\x0dx" in result.stderr
    assert result.stderr.count("\n") == 1


# --- JSON --------------------------------------------------------------------------------


def test_json_keeps_the_exact_strings(hostile):
    result = invoke("diff", BASE, hostile, "--no-cache", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    names = {t["name"] for t in data["tensors"]}
    assert set(NAMES) <= names
    assert SHARD in {s["name"] for s in data["shards"]}
    assert SIDE_FILE in {f["name"] for f in data["files"]}
    inspected = json.loads(invoke("inspect", hostile, "--json").stdout)
    assert set(NAMES) <= {t["name"] for t in inspected["tensors"]}
    assert inspected["model_type"] == MODEL_TYPE
    assert {s["name"]: s["metadata"] for s in inspected["shards"]}[S1][META_KEY] == META_VALUE


# --- Markdown ----------------------------------------------------------------------------


def parse(markdown: str):
    return MarkdownIt("commonmark").enable("table").parse(markdown)


def inline_text(token) -> str:
    """What an inline token shows: its text and code spans, escapes resolved."""
    return "".join(c.content for c in token.children or [] if c.type in ("text", "code_inline"))


def test_markdown_card_keeps_its_shape_with_hostile_names(hostile):
    result = invoke("diff", BASE, hostile, "--no-cache", "--markdown")
    assert result.exit_code == 1
    card = result.stdout
    assert not any(char in card for char in RAW)
    tokens = parse(card)
    assert [t.content for t in tokens if t.type == "html_block"] == [
        "\n".join(block) + "\n" for block in (HASHES_OPEN, HASHES_CLOSE)
    ]
    assert not [c for t in tokens for c in t.children or [] if c.type in ("html_inline", "link_open")]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["What's actually different from base", "SHA256 evidence"]
    assert [t.tag for t in tokens if t.type == "heading_open"] == ["h2", "h2"]
    # the table: one row per source line, three cells in each
    source_rows = [line for line in card.splitlines() if line.startswith("| ")]
    rows = []
    for t in tokens:
        if t.type == "tr_open":
            rows.append(0)
        elif t.type in ("td_open", "th_open"):
            rows[-1] += 1
    assert rows == [3] * len(source_rows)
    # one bullet per shard and side file, nothing else turned into a list, quote or code block
    data = json.loads(invoke("diff", BASE, hostile, "--no-cache", "--json").stdout)
    assert sum(t.type == "list_item_open" for t in tokens) == len(data["shards"]) + len(data["files"])
    assert sum(t.type == "bullet_list_open" for t in tokens) == 1
    assert not [t for t in tokens if t.type in ("blockquote_open", "code_block", "fence", "hr", "ordered_list_open")]
    # names intact, as `inert` shows them: a tensor outside a layer stack is its own code span, one
    # inside a stack is shown by its family (the name less its layer number); shards and files too
    spans = {c.content for t in tokens for c in t.children or [] if c.type == "code_inline"}
    hostile_tensors = [t for t in data["tensors"] if t["name"] in NAMES]
    assert len(hostile_tensors) == len(NAMES)
    for t in hostile_tensors:
        if t["stack"] is None:
            assert inert(t["name"]) in spans, t["name"]
        else:
            assert any(span.endswith(inert(t["family"])) for span in spans), t["name"]
    assert inert(SHARD) in spans and inert(SIDE_FILE) in spans


HOSTILE_TEXT = st.text(
    alphabet=st.sampled_from(list(string.ascii_letters[:6] + " |`\\*_[]()<>&#!-+.:\n\r\t\x1b\u202e\x00")),
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(HOSTILE_TEXT)
def test_md_code_is_one_cell_showing_the_inert_text(text):
    for make in (md_code, md_text):
        table = f"| h | i |\n|---|---|\n| {make(text)} | x |\n"
        tokens = parse(table)
        assert [t.type for t in tokens].count("td_open") == 2, (make, table)
        cell = next(tokens[i + 1] for i, t in enumerate(tokens) if t.type == "td_open")
        empty = " " if make is md_code else ""  # CommonMark has no empty code span
        assert inline_text(cell) == (inert(text) or empty), table
        assert not [c for c in cell.children if c.type not in ("text", "code_inline")], table


@settings(max_examples=300, deadline=None)
@given(HOSTILE_TEXT)
def test_md_code_and_md_text_in_a_bullet_stay_in_it(text):
    for item, shows in (
        (f"- {md_code(text, table=False)} tail\n", inert(text) or " "),
        (f"- {md_text(text)} tail\n", inert(text)),
    ):
        tokens = parse(item)
        assert [t.type for t in tokens] == [
            "bullet_list_open",
            "list_item_open",
            "paragraph_open",
            "inline",
            "paragraph_close",
            "list_item_close",
            "bullet_list_close",
        ], item
        assert inline_text(tokens[3]) == (f"{shows} tail" if shows else "tail"), item


def test_header_difference_keys_are_code_spans(tmp_path):
    """A shard whose only change is a hostile metadata key: the key is a code span."""
    other = make_variant(tmp_path / "meta", shard_metadata={S2: {META_KEY: "x"}})
    card = invoke("diff", BASE, other, "--no-cache", "--markdown").stdout
    tokens = parse(card)
    spans = {c.content for t in tokens for c in t.children or [] if c.type == "code_inline"}
    assert f"__metadata__.{inert(META_KEY)}" in spans
    assert sum(t.type == "list_item_open" for t in tokens) == 4  # 2 shards, config, index


# --- surgeon.text ------------------------------------------------------------------------


def test_inert_leaves_ordinary_names_alone_and_escapes_the_rest():
    for name in ("model.layers.0.self_attn.q_proj.weight", "a b", "ünïcødé 名前", "[/]"):
        assert inert(name) == name
    assert inert("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert inert("\r\n\t\x7f\x85") == "\\x0d\\x0a\\x09\\x7f\\x85"
    assert inert("\u202e\u200b\u2028\ufeff") == "\\u202e\\u200b\\u2028\\ufeff"
    assert inert("\U000e0041") == "\\U000e0041"  # a tag character
    assert inert(inert("x\x1by")) == inert("x\x1by")
    assert inert_lines("a\x1b\nb\r") == "a\\x1b\nb\\x0d"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_inert_output_has_no_control_or_format_character(text):
    import unicodedata

    shown = inert(text)
    assert not [c for c in shown if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    assert inert(shown) == shown


def test_markup_safe_shows_markup_literally_in_rich():
    from rich.text import Text

    for text in ("[/]", "[bold red]x[/]", "[link=https://e]x[/link]", "x\\", "\\[b]", "[a] \x1b"):
        text_in_markup = Text.from_markup(f"[bold]{markup_safe(text)}[/bold]")
        assert text_in_markup.plain == inert(text)
        assert not [span for span in text_in_markup.spans if span.style != "bold"]


# --- canary prompts and generated text -------------------------------------------------


def hostile_canary(tmp_path):
    from surgeon.recover.canary.checks import CanaryReport, PromptResult, read_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("[/] \x1b[2J prompt [link=https://evil]x[/link]\n:smile: \u202eevil\n", encoding="utf-8")
    results = [
        PromptResult(
            prompt=p.label,
            base_text="base [bold]x[/] \x1b]8;;https://evil\x07link\x1b]8;;\x07\nnext line",
            text="model [/] \r\x1b[31mred:smile:",
            drift=1.0,
            self_ratio=1.0,
            repetition=0.0,
            nonprintable=0.0,
            tokens=5,
            agreement=1,
            failures=["drift [/] \x1b[2J"],
        )
        for p in read_prompts(prompts)
    ]
    assert results[0].prompt == "[/] \x1b[2J prompt [link=https://evil]x[/link]"  # read exactly
    return CanaryReport(passed=False, prompts=results, options={}, base_cache_hit=False)


def draw(renderable) -> str:
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True, color_system="truecolor", width=300).print(renderable)
    return buffer.getvalue()


def test_canary_table_and_tui_blocks_keep_prompts_and_outputs_inert(tmp_path):
    from surgeon.tui.views import canary_blocks

    from surgeon.recover.render import canary_table

    report = hostile_canary(tmp_path)
    for out in (draw(canary_table(report)), draw(canary_blocks(report))):
        assert "\x1b]8;" not in out
        assert_inert(out)
        plain = SGR.sub("", out)
        for shown in ("[/] \\x1b[2J prompt [link=https://evil]x[/link]", ":smile: \\u202eevil", "base [bold]x[/]"):
            assert shown in plain
        assert "\\x0d\\x1b[31mred:smile:" in plain and "drift [/] \\x1b[2J" in plain
        assert "next line" in plain  # generated text keeps its line breaks


def test_salvage_summary_shows_the_folder_inert(tmp_path):
    from surgeon.cli.recover import _salvage_summary

    manifest = {
        "salvage": {"kept_layers": [0], "rolled_back_layers": [1], "canary_after": None},
        "written": {"layers": [0], "copied_shards": [], "shards": ["a"]},
    }
    buffer = io.StringIO()
    _salvage_summary(manifest, Path("out[/]\x1b[2J:smile:"), Console(file=buffer, force_terminal=True))
    assert_inert(buffer.getvalue())
    assert "wrote out[/]\\x1b[2J:smile:: kept layers 0" in SGR.sub("", buffer.getvalue())


def test_prune_summary_shows_config_values_and_messages_inert():
    from types import SimpleNamespace

    from surgeon.cli.prune import _summary
    from surgeon.prune.heads import HeadCount

    manifest = {
        "messages": ["note about [/] \x1b[2J"],
        "layers": [
            {"layer": 0, "layer_type": LAYER_TYPE, "num_heads": 8, "head_dim": 8, "pruned_heads": [1], "refit": None}
        ],
        "written": {"layers": [0], "tensors": ["t"], "copied_shards": [], "shards": ["a"]},
        "layer_passes": 1,
    }
    counts = [HeadCount((0,), 8, 0.125, 1)]
    result = SimpleNamespace(
        manifest=manifest,
        output=Path("out[/]\x1b[2J"),
        forward_calls=1,
        resumed_at=None,
        head_counts=counts,
        reshape_line=None,
    )
    buffer = io.StringIO()
    _summary(result, Console(file=buffer, force_terminal=True, width=200))
    assert_inert(buffer.getvalue())
    plain = SGR.sub("", buffer.getvalue())
    assert inert(LAYER_TYPE) in plain and "note about [/] \\x1b[2J" in plain and "wrote out[/]\\x1b[2J" in plain
    assert "pruned 1 of 8 query heads in layer 0 (12.5%)" in plain


# --- the TUI -----------------------------------------------------------------------------


def test_tui_shows_hostile_names_escaped_in_tables_detail_and_dialogs(tmp_path):
    from surgeon.tui.app import SurgeonApp
    from surgeon.tui.dialogs import TensorDetail

    from tests.tui.test_tui import _render_plain, settle, table_rows

    candidate = make_variant(
        tmp_path / "cand[/]\x1b[2J",
        add={"[/]": (S1, np.ones(4, np.float32)), ESC_NAME: (S1, np.ones(4, np.float32))},
    )
    (candidate / SIDE_FILE).write_text("x")
    base = tmp_path / "base"
    shutil.copytree(BASE, base)

    async def flow(app, pilot):
        await settle(app, pilot)
        assert_inert(_render_plain(app.query_one("#summary")))
        files = [r[0] for r in table_rows(app.query_one("#files"))]
        assert inert(SIDE_FILE) in files
        assert "\x1b" not in app.sub_title and "\\x1b[2J" in app.sub_title
        await pilot.press("2")
        await pilot.pause()
        table = app.query_one("#tensor-table")
        names = [r[0] for r in table_rows(table)]
        assert "[/]" in names and inert(ESC_NAME) in names
        pane = app.query_one("TensorsPane")
        table.focus()
        table.move_cursor(row=[t.name for t in pane.shown].index(ESC_NAME))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TensorDetail)
        assert _render_plain(app.screen.query_one("#dialog-title")).strip() == inert(ESC_NAME)
        detail = _render_plain(app.screen.query_one("#tensor-detail"))
        assert_inert(detail)
        assert "\\x1b[2J" in detail.replace("\n", "")
        await pilot.press("escape")
        app.show_error("bad [/] name", "tensor [/] \x1b[2J [link=https://evil]x[/link]\nsecond line")
        await pilot.pause()
        body = _render_plain(app.screen.query_one("#dialog-text"))
        assert "tensor [/] \\x1b[2J [link=https://evil]x[/link]" in body and "second line" in body
        assert "bad [/] name" in _render_plain(app.screen.query_one("#dialog-title"))
        await pilot.press("enter")
        assert "\x1b[2J" not in app.export_screenshot()

    async def main_():
        app = SurgeonApp(base, candidate)
        async with app.run_test(size=(120, 36)) as pilot:
            await flow(app, pilot)

    asyncio.run(main_())
