"""Natural order (layer 2 before layer 10) and numeric stats for retyped tensors (issue 12)."""

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from surgeon.cli.main import main
from surgeon.diff import stats as stats_module
from surgeon.diff.engine import DiffOptions, diff_checkpoints, natural_key
from surgeon.diff.render_terminal import render_terminal
from surgeon.diff.report import family_rows, to_json
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import float32_to_bf16_bits
from surgeon.format.safetensors import TensorBytes, write_safetensors

LAYERS = 12
CHANGED = (2, 10, 11)


def run(base, other, **options):
    return diff_checkpoints(open_checkpoint(base), open_checkpoint(other), DiffOptions(**options))


def raw(dtype: str, values: np.ndarray) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        return float32_to_bf16_bits(values).tobytes()
    return values.astype({"F16": "<f2", "F32": "<f4"}[dtype]).tobytes()


def write(folder, tensors: dict[str, tuple[str, np.ndarray]]):
    """One model.safetensors; tensors written in lexicographic order, as safetensors does."""
    folder.mkdir()
    items = [TensorBytes(n, d, tuple(v.shape), raw(d, v)) for n, (d, v) in sorted(tensors.items())]
    write_safetensors(folder / "model.safetensors", items)
    return folder


def twelve_layers(tmp_path):
    rng = np.random.default_rng(0)
    base = {"model.embed_tokens.weight": ("F32", rng.normal(size=(4, 4)))}
    for layer in range(LAYERS):
        for family in ("self_attn.q_proj.weight", "mlp.up_proj.weight"):
            base[f"model.layers.{layer}.{family}"] = ("F32", rng.normal(size=(4, 4)))
    other = dict(base)
    for layer in CHANGED:
        name = f"model.layers.{layer}.mlp.up_proj.weight"
        other[name] = ("F32", base[name][1] + 1.0)
    return write(tmp_path / "base", base), write(tmp_path / "other", other)


def test_natural_key_compares_digit_runs_as_numbers():
    names = [f"model.layers.{n}.mlp.up_proj.weight" for n in (10, 2, 1, 11, 0)]
    assert [n.split(".")[2] for n in sorted(names, key=natural_key)] == ["0", "1", "2", "10", "11"]
    experts = [f"model.layers.0.mlp.experts.{e}.up_proj.weight" for e in (10, 2, 1)]
    assert [n.split(".")[5] for n in sorted(experts, key=natural_key)] == ["1", "2", "10"]
    # Outside any stack first (as before), then by stack and layer; ties broken by the name.
    assert sorted(["model.layers.3.x", "lm_head.weight", "a.01", "a.1"], key=natural_key) == [
        "a.01",
        "a.1",
        "lm_head.weight",
        "model.layers.3.x",
    ]
    huge = "x." + "9" * 5000  # int() refuses runs over 4300 digits: the key must not
    assert sorted([huge, "x.10"], key=natural_key) == ["x.10", huge]


def test_twelve_layers_are_listed_in_natural_order_everywhere(tmp_path):
    base, other = twelve_layers(tmp_path)
    report = run(base, other)
    layers = [t.layer for t in report.tensors if t.layer is not None]
    assert layers == sorted(layers) and layers[-1] == 11
    data = to_json(report)
    assert [t["name"] for t in data["tensors"]] == [t.name for t in report.tensors]
    assert data["summary"]["layers_changed"] == list(CHANGED)
    assert "in layers 2, 10-11" in data["summary"]["text"]
    up = next(r for r in family_rows(report) if r.family == "mlp.up_proj.weight")
    assert up.layers_changed == list(CHANGED)
    assert up.layers_unchanged == [n for n in range(LAYERS) if n not in CHANGED]
    text = CliRunner().invoke(main, ["diff", str(base), str(other), "-v"]).stdout
    positions = [text.index(f"model.layers.{n}.mlp.up_proj.weight") for n in CHANGED]
    assert positions == sorted(positions)


def test_the_tui_sorts_tensors_with_the_same_key(tmp_path):
    views = pytest.importorskip("surgeon.tui.views")
    report = run(*twelve_layers(tmp_path))
    shuffled = list(reversed(report.tensors))
    assert [t.name for t in sorted(shuffled, key=views.TENSOR_SORTS["name"])] == [t.name for t in report.tensors]
    by_layer = [t.layer for t in sorted(shuffled, key=views.TENSOR_SORTS["layer"])]
    assert by_layer == [*(n for n in range(LAYERS) for _ in (0, 1)), None]


def reference(base: np.ndarray, other: np.ndarray) -> dict:
    b, o = base.astype(np.float64).ravel(), other.astype(np.float64).ravel()
    d = o - b
    return {
        "max_abs_delta": np.abs(d).max(),
        "rel_frobenius": np.linalg.norm(d) / np.linalg.norm(b),
        "cosine": b @ o / (np.linalg.norm(b) * np.linalg.norm(o)),
        "frac_changed": np.mean(b != o),
        "elements_changed": int(np.count_nonzero(b != o)),
    }


@pytest.mark.parametrize("chunk", [None, 7])  # 7: chunks that split rows, on two element widths
@pytest.mark.parametrize(("src", "dst"), [("F32", "BF16"), ("F32", "F16"), ("BF16", "F16"), ("F16", "F32")])
def test_retyped_tensors_get_stats_after_a_cast_to_a_common_type(tmp_path, monkeypatch, chunk, src, dst):
    if chunk:
        monkeypatch.setattr(stats_module, "STATS_CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(1)
    values = rng.normal(size=(6, 5)).astype(np.float32)
    values[0, :3] = [0.5, -2.0, 0.0]  # exact in every dtype: not counted as changed
    decode = {"F32": lambda v: v, "F16": lambda v: v.astype(np.float16), "BF16": bf16_values}
    stored = decode[src](values).astype(np.float32)  # what the base file holds, as float32
    base = write(tmp_path / "a", {"model.layers.0.mlp.up_proj.weight": (src, stored)})
    other = write(tmp_path / "b", {"model.layers.0.mlp.up_proj.weight": (dst, stored)})
    t = run(base, other).tensors[0]
    assert t.status == "retyped" and (t.base.dtype, t.other.dtype) == (src, dst)
    want = reference(stored, decode[dst](stored))
    assert want["elements_changed"] <= values.size - 3  # the exact values stay
    got = vars(t.stats)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def bf16_values(values: np.ndarray) -> np.ndarray:
    """numpy's view of bfloat16: the rounded top 16 bits of a float32."""
    bits = float32_to_bf16_bits(values).astype(np.uint32) << 16
    return bits.view(np.float32)


def test_retyped_rows_show_stats_and_the_dtypes_in_the_status(tmp_path):
    values = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    base = write(tmp_path / "a", {"w.weight": ("F32", values), "v.weight": ("F32", values)})
    other = write(tmp_path / "b", {"w.weight": ("BF16", values), "v.weight": ("F32", values.reshape(4, 3))})
    report = run(base, other)
    shaped = next(t for t in report.tensors if t.name == "v.weight")
    assert shaped.status == "retyped" and shaped.stats is None  # no element pairing across shapes
    console = Console(width=200, record=True)
    render_terminal(report, console)
    text = console.export_text()
    table = text.split("Tensors that differ")[1].splitlines()
    w_row = next(line for line in table if "w.weight" in line)
    v_row = next(line for line in table if "v.weight" in line)
    stats = next(t for t in report.tensors if t.name == "w.weight").stats
    assert "retyped F32→BF16" in w_row and format(stats.max_abs_delta, ".3g") in w_row
    assert "[3, 4] → [4, 3]" in v_row and "→BF16" not in v_row
    retyped = {t["name"]: t for t in to_json(report)["tensors"]}
    assert retyped["w.weight"]["stats"]["elements_changed"] == stats.elements_changed > 0
    assert retyped["v.weight"]["stats"] is None


def test_inspect_lists_tensors_in_natural_order(tmp_path):
    base, _ = twelve_layers(tmp_path)
    text = CliRunner().invoke(main, ["inspect", str(base), "-v"]).stdout.split("Tensors")[-1]
    positions = [text.index(f"model.layers.{n}.mlp.up_proj.weight") for n in range(LAYERS)]
    assert positions == sorted(positions)  # the file holds them as 0, 1, 10, 11, 2, ...
