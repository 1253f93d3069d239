"""Issue 22 in the TUI: the Prune form's MLP channels (--ffn-frac, --ffn-importance), the
channels each layer lost on the Plan tab's map, and in the prune's progress."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from surgeon.tui.dialogs import MessageDialog

from surgeon.demo import DEMO_MODEL as BASE
from surgeon.errors import SurgeonError
from surgeon.prune.options import PRUNE_DEFAULTS, PruneOptions
from tests.tui.test_tui import compare_screenshots, run_app, screenshot, table_rows, text_of, type_into

FORM = {"fraction": "0", "layers": "all", "importance": "recon", "heal": "lstsq", "mode": "mask"}


def test_the_form_builds_options_with_the_mlp_fraction(tmp_path):
    from surgeon.tui.panes import prune_request

    form = FORM | {"ffn_fraction": "0.25", "ffn_importance": "flap", "output": str(tmp_path / "o")}
    options, _ = prune_request(form, BASE, 8, None)
    assert (options.prune_frac, options.ffn_frac, options.ffn_importance) == (0.0, 0.25, "flap")
    options, _ = prune_request(form | {"ffn_fraction": ""}, BASE, 8, None)  # empty: the default, none
    assert (options.ffn_frac, PRUNE_DEFAULTS.ffn_frac) == (0.0, 0.0)
    _, output = prune_request(form | {"output": ""}, BASE, 8, None)  # the folder named for it
    assert output.name.startswith("model-pruned-0-mlp-0.25-layers-all")


def test_a_bad_mlp_fraction_is_refused_in_the_engines_words(tmp_path):
    from surgeon.tui.panes import prune_request

    form = FORM | {"ffn_importance": "wanda", "output": str(tmp_path / "o")}
    with pytest.raises(SurgeonError) as engine:
        PruneOptions(ffn_frac=1.0).validate()
    for bad in ("1", "-0.25", "nan", "half"):
        with pytest.raises(SurgeonError) as refused:
            prune_request(form | {"ffn_fraction": bad}, BASE, 8, None)
        assert str(refused.value) == f"MLP fraction {bad!r}: {engine.value}, e.g. 0.25 (0: none)"
    # channels in reshape mode: sliced out with the heads (a head fraction reshape can reach)
    options, _ = prune_request(form | {"fraction": "0.25", "ffn_fraction": "0.25", "mode": "reshape"}, BASE, 8, None)
    assert (options.mode, options.ffn_frac, options.prune_frac) == ("reshape", 0.25, 0.25)


def test_the_prune_tab_takes_the_mlp_fields_and_refuses_a_bad_one_in_one_line(tmp_path):
    from surgeon.tui.panes import PrunePane

    async def flow(app, pilot):
        await pilot.press("5")
        assert app.query_one("#prune-ffn-frac").value == f"{PRUNE_DEFAULTS.ffn_frac:g}"
        assert app.query_one("#prune-ffn-importance").value == PRUNE_DEFAULTS.ffn_importance
        await type_into(pilot, "#prune-ffn-frac", "0.5")
        app.query_one("#prune-ffn-importance").value = "obs"
        await type_into(pilot, "#prune-output", str(tmp_path / "o"))
        options, _ = app.query_one(PrunePane).request(BASE, 8, None)
        assert (options.ffn_frac, options.ffn_importance) == (0.5, "obs")
        await type_into(pilot, "#prune-ffn-frac", "1")
        await pilot.press("escape", "p")
        await pilot.pause()
        assert isinstance(app.screen, MessageDialog)
        assert text_of(app, "#dialog-text").strip().startswith("MLP fraction '1': the fraction of MLP channels")

    run_app(flow)


def test_the_progress_shows_the_channels_each_layer_lost():
    from surgeon.tui.panes import PrunePane

    def result(layer, heads, channels, width):
        refit = {"rel_residual": 0.25} if heads else None
        return SimpleNamespace(
            layer=layer,
            pruned=True,
            pruned_heads=heads,
            refit=refit,
            seconds=1.0,
            ffn_width=width,
            ffn_pruned_channels=list(range(channels)),
        )

    async def flow(app, pilot):
        pane = app.query_one(PrunePane)
        table = app.query_one("#prune-progress")
        pane.layer_done(result(0, [3], 0, 0))  # heads alone: the table as before
        assert "channels" not in table.columns
        pane.reset_progress()
        pane.layer_done(result(0, [], 32, 128))
        pane.layer_done(result(1, [2], 32, 128))
        assert [[row[0], row[2], row[-1]] for row in table_rows(table)] == [
            ["0", "none", "-32/128"],
            ["1", "#2", "-32/128"],
        ]
        pane.reset_progress()  # the next prune starts without the column
        assert "channels" not in table.columns and table.row_count == 0

    run_app(flow, hashed=False)


def plan_map_check(channels):
    async def flow(app, pilot):
        await pilot.press("3")
        await pilot.pause()
        plan_map = app.query_one("#plan-map")
        assert str(plan_map.ordered_columns[-1].label) == "zeroed"
        rows = table_rows(plan_map)
        assert [row[-1] for row in rows] == ["-25% ch"] * 2 + ["-"] * 6
        assert plan_map.virtual_size.width <= 80
        await pilot.press("space")  # layer 0 back to the base: its channels too
        await pilot.pause()
        assert table_rows(plan_map)[0][-1] == "(-25% ch)"
        layer_map = app.query_one("#layer-map")  # the Overview's map says it too
        assert table_rows(layer_map)[1][-1] == "-25% ch"

    return flow


def test_the_plan_tab_shows_the_channels_each_layer_lost(channels_0_1):
    """32 of 128 channels in layers 0-1, from the manifest; the map still fits 80 columns."""
    run_app(plan_map_check(channels_0_1), size=(80, 24), candidate=channels_0_1)


def test_the_plan_tab_reads_the_channels_from_the_diff_with_no_manifest(channels_0_1, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(channels_0_1, bare)
    (bare / "prune_manifest.json").unlink()
    run_app(plan_map_check(bare), size=(80, 24), candidate=bare)


def test_the_manifest_channels_of_a_layer_the_diff_finds_unchanged_are_not_shown(channels_0_1, tmp_path):
    """A manifest's claim is shown only where the diff finds the layer changed."""
    import json

    from surgeon.tui.views import layer_rows

    from surgeon.diff.engine import DiffOptions, diff_checkpoints
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.recover.plan import RollbackPlan

    report = diff_checkpoints(open_checkpoint(str(BASE)), open_checkpoint(str(channels_0_1)), DiffOptions())
    rows = layer_rows(report, RollbackPlan(report), {0: (32, 128), 5: (32, 128)})
    assert [row.channels for row in rows] == [(32, 128)] + [None] * 7
    assert json.loads((channels_0_1 / "prune_manifest.json").read_text())["layers"][0]["ffn_width"] == 128


@pytest.mark.slow
def test_plan_screenshot_with_channels(channels_0_1, tmp_path, monkeypatch):
    """The Plan tab of a channel-pruned candidate at 80x24, as its golden SVG."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    shots = {}

    async def flow(app, pilot):
        await pilot.press("3")
        shots["plan-channels-80x24"] = await screenshot(app, pilot)

    run_app(flow, size=(80, 24), candidate=channels_0_1)
    compare_screenshots(shots, tmp_path)
