"""Reshape in the TUI (issue 21.5): the Plan tab says whether the plan could have its removed
heads sliced out and what that saves, the write dialog offers it, the Prune form's mode.

The demo candidate removes one head of a 2-head KV group per layer (not reshapable: the
groups lose different numbers); the reshapable pair is the demo base with the same heads
zeroed as mask mode zeroes them that tests/prune/test_reshape.py reshapes (sliding layers
lose KV group 1 whole, full layers one head of each group: 6 of 8 query heads kept)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Checkbox, Input, Select

from surgeon.demo import DEMO_MODEL as BASE
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import raw_view
from surgeon.format.safetensors import TensorBytes, write_safetensors
from surgeon.prune.reshape import preview
from tests.tui.test_tui import run_app, settle, text_of

REMOVED = {layer: ([3, 7] if layer in (5, 7) else [2, 3]) for layer in range(8)}  # 6 of 8 kept, balanced


def masked_pair(tmp_path: Path, removed: dict[int, list[int]] = REMOVED, ghost: bool = False) -> Path:
    """The demo base with `removed` (layer -> query heads) zeroed as mask mode zeroes them:
    q_proj rows and o_proj columns (with `ghost`, the q rows only)."""
    ckpt, dst = open_checkpoint(BASE), tmp_path / "masked"
    dst.mkdir()
    for side in BASE.iterdir():
        if not side.name.endswith(".safetensors"):
            (dst / side.name).write_bytes(side.read_bytes())
    for shard_name, shard in ckpt.shards.items():
        data = (BASE / shard_name).read_bytes()
        out = []
        for name, info in sorted(shard.tensors.items(), key=lambda item: item[1].start):
            raw = raw_view(bytearray(data[info.start : info.end]), info.dtype).reshape(info.shape)
            parts = name.split(".")
            if "layers" in parts and "self_attn" in parts:
                layer = int(parts[parts.index("layers") + 1])
                prefix = name.rsplit(".self_attn.", 1)[0]
                head_dim = ckpt.tensors[f"{prefix}.self_attn.q_norm.weight"].shape[0]
                for head in removed.get(layer, []):
                    span = slice(head * head_dim, (head + 1) * head_dim)
                    if name.endswith("q_proj.weight"):
                        raw[span] = 0
                    elif name.endswith("o_proj.weight") and not ghost:
                        raw[:, span] = 0
            out.append(TensorBytes(name, info.dtype.name, info.shape, np.ascontiguousarray(raw).tobytes()))
        write_safetensors(dst / shard_name, out, shard.metadata)
    return dst


def test_preview_from_headers_alone():
    """The rules reshape applies to the bytes, from config and headers, in a few words."""
    ckpt = open_checkpoint(BASE)
    assert preview(ckpt, REMOVED).text() == (
        "reshape: possible, 6 of 8 query heads kept, saves 26,624 parameters (52.0 KiB)"
    )
    some = {layer: heads for layer, heads in REMOVED.items() if layer < 4}
    assert preview(ckpt, some).problem == "layers 4-7 keep all heads (every layer must keep the same number)"
    assert preview(ckpt, REMOVED | {3: []}).problem == "layer 3 keeps all heads (every layer must keep the same number)"
    assert preview(ckpt, REMOVED | {0: [1, 2]}).problem == "in layer 0 the KV groups lose different numbers of heads"
    assert (
        preview(ckpt, REMOVED | {0: [1]}).problem == "layers keep different numbers of query heads (6 in 1-7; 7 in 0)"
    )
    assert preview(ckpt, REMOVED, {2: [5]}).problem.startswith("layer 2 has zeroed q_proj rows with live o_proj")
    assert preview(ckpt, {}).problem == "no head is removed"


def test_the_demo_plan_cannot_be_reshaped():
    """The demo candidate removes one head of a two-head KV group: the line says why not,
    and the write dialog offers no Reshape box."""

    async def flow(app, pilot):
        await pilot.press("3")
        line = text_of(app, "#plan-reshape").strip()
        assert line == "reshape: not possible: in layers 0-7 the KV groups lose different numbers of heads"
        await pilot.press("w")
        await pilot.pause()
        assert not app.screen.query("#write-reshape")
        assert "reshape:" not in text_of(app, "#write-description")

    run_app(flow, size=(80, 24))


def test_a_balanced_plan_reshapes_on_write(tmp_path):
    """The plan line follows the plan (a layer rolled back keeps all its heads); written with
    Reshape ticked, the output has 6 query heads and o_proj's smaller shape, verifies, and
    the mask-mode build beside it is gone."""
    candidate = masked_pair(tmp_path)
    out = tmp_path / "out"

    async def flow(app, pilot):
        await pilot.press("3")
        possible = "reshape: possible, 6 of 8 query heads kept, saves 26,624 parameters (52.0 KiB)"
        assert text_of(app, "#plan-reshape").strip() == possible
        app.toggle_layer(3)
        await pilot.pause()
        assert text_of(app, "#plan-reshape").strip() == (
            "reshape: not possible: layer 3 keeps all heads (every layer must keep the same number)"
        )
        await pilot.press("ctrl+z")
        await pilot.pause()
        assert text_of(app, "#plan-reshape").strip() == possible
        await pilot.press("w")
        await pilot.pause()
        box = app.screen.query_one("#write-reshape", Checkbox)
        assert box.value is False  # off unless ticked
        assert possible in text_of(app, "#write-description")
        app.screen.query_one("#write-output", Input).value = str(out)
        box.value = True
        await pilot.click("#write")
        await settle(app, pilot)
        assert text_of(app, "#dialog-title").strip() == "Written and verified"
        assert "the reshape's claims hold" in text_of(app, "#dialog-text")

    run_app(flow, size=(80, 24), candidate=candidate)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (6, 3)
    tensors = open_checkpoint(out).tensors
    assert tensors["model.layers.0.self_attn.o_proj.weight"].shape == (64, 48)
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (48, 64)
    assert not list(tmp_path.glob(".out.*"))  # the mask-mode build beside it is gone


def test_a_write_without_reshape_keeps_the_shapes(tmp_path):
    candidate = masked_pair(tmp_path)
    out = tmp_path / "out"

    async def flow(app, pilot):
        await pilot.press("w")
        await pilot.pause()
        app.screen.query_one("#write-output", Input).value = str(out)
        await pilot.click("#write")
        await settle(app, pilot)
        assert text_of(app, "#dialog-title").strip() == "Written and verified"

    run_app(flow, size=(80, 24), candidate=candidate)
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 8
    assert open_checkpoint(out).tensors["model.layers.0.self_attn.o_proj.weight"].shape == (64, 64)


def test_a_failed_reshape_is_the_error_dialog(tmp_path):
    """A head whose q rows are zero but o columns are not cannot be sliced: the Plan tab says
    so; a write asked to reshape anyway (the request made by hand) fails in one dialog and
    leaves neither output nor mask-mode build."""
    candidate = masked_pair(tmp_path, ghost=True)
    out = tmp_path / "out"

    async def flow(app, pilot):
        await pilot.press("3")
        assert (
            text_of(app, "#plan-reshape")
            .strip()
            .startswith("reshape: not possible: layers 0-7 have zeroed q_proj rows")
        )
        app._write_confirmed((out, False, True))
        await settle(app, pilot)
        assert text_of(app, "#dialog-title").strip() == "write failed"
        assert "cannot reshape" in text_of(app, "#dialog-text")

    run_app(flow, size=(80, 24), candidate=candidate)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize(
    ("fraction", "layers", "said"),
    [
        ("0.125", "all", "a reshape removing 12.5% of 8 query heads is not reachable"),
        ("0.25", "0-3", "a reshape prunes every layer"),
    ],
)
def test_the_prune_form_refuses_an_unreachable_reshape(tmp_path, monkeypatch, fraction, layers, said):
    monkeypatch.chdir(tmp_path)

    async def flow(app, pilot):
        await pilot.press("5")
        await pilot.pause()
        app.query_one("#prune-frac", Input).value = fraction
        app.query_one("#prune-layers", Input).value = layers
        app.query_one("#prune-mode", Select).value = "reshape"
        await pilot.pause()
        app.action_prune()
        await pilot.pause()
        assert text_of(app, "#dialog-title").strip() == "Prune options"
        assert said in text_of(app, "#dialog-text")

    run_app(flow, size=(80, 24))


def test_the_prune_form_asks_for_a_reachable_reshape(tmp_path, monkeypatch):
    """0.25 of the demo's 8 heads is reachable: the question names the mode; nothing starts."""
    monkeypatch.chdir(tmp_path)

    async def flow(app, pilot):
        await pilot.press("5")
        app.query_one("#prune-frac", Input).value = "0.25"
        app.query_one("#prune-mode", Select).value = "reshape"
        await pilot.pause()
        app.action_prune()
        await pilot.pause()
        assert "mode reshape" in text_of(app, "#dialog-text")
        await pilot.press("escape")

    run_app(flow, size=(80, 24))


def test_prune_request_maps_the_mode(tmp_path):
    from surgeon.tui.panes import prune_request

    form = {"fraction": "0.25", "layers": "all", "importance": "recon", "heal": "lstsq", "mode": "reshape"}
    options, _ = prune_request(form | {"output": str(tmp_path / "o")}, BASE, 8, None)
    assert options.mode == "reshape"
    options, _ = prune_request(form | {"mode": "mask", "output": str(tmp_path / "p")}, BASE, 8, None)
    assert options.mode == "mask"
