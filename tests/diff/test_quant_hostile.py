"""`surgeon diff BASE QUANT` and `surgeon origin` on damaged NVFP4/FP8 checkpoints: scales
that are each finite but whose product overflows float32 decode to inf or NaN without a
warning on stderr (numpy's RuntimeWarnings are errors here), a different answer and not
trouble, as a GGUF's damaged blocks are; a module that stores both `weight` and
`weight_packed` names one logical weight twice and is one line and exit 2."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.safetensors import TensorBytes, write_safetensors
from tests.gguf_fixtures import save_hf
from tests.quantized_fixtures import write_quantized

MODULE = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf("llama", tmp_path_factory.mktemp("qhostile") / "base", seed=0)


def run(*args) -> tuple[int, str]:
    """(exit code, stderr), RuntimeWarnings as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = CliRunner().invoke(main, [*map(str, args), "--no-progress"])
    return result.exit_code, result.stderr


def rewrite(folder, edit) -> None:
    """Rewrite model.safetensors with edit(tensors) applied to {name: [dtype, shape, bytes]}."""
    ckpt = open_checkpoint(folder)
    data = (folder / "model.safetensors").read_bytes()
    tensors = {
        name: [info.dtype.name, tuple(info.shape), data[info.start : info.end]]
        for name, info in ckpt.shards["model.safetensors"].tensors.items()
    }
    edit(tensors)
    write_safetensors(folder / "model.safetensors", [TensorBytes(n, *v) for n, v in tensors.items()], {"format": "pt"})


def f32(value, shape=()) -> list:
    return ["F32", shape, np.full(shape, value, dtype="<f4").tobytes()]


@pytest.mark.parametrize(
    "scheme, part, value",
    [
        ("modelopt-nvfp4", "weight_scale_2", f32(3e38)),  # E4M3 scales up to 448 times 3e38
        ("ct-nvfp4", "weight_global_scale", f32(1e-45, (1,))),  # divides: 448 / 1e-45
        ("ct-fp8-channel", "weight_scale", f32(3e38, (64, 1))),  # codes up to 448 times 3e38
    ],
)
def test_scales_whose_product_overflows_decode_quietly(tmp_path, base, scheme, part, value):
    quant = tmp_path / scheme
    write_quantized(base, quant, scheme)
    rewrite(quant, lambda tensors: tensors.__setitem__(f"{MODULE}.{part}", value))
    for args in (["diff", base, quant, "--json"], ["origin", quant, base, "--json"]):
        code, stderr = run(*args)
        assert code == 1 and stderr == "", (args[0], stderr)


@pytest.mark.parametrize("stored", ["U8", "F32"])
def test_a_module_with_both_weight_and_weight_packed_is_one_line(tmp_path, base, stored):
    """Both name the logical weight `q_proj.weight`: diff read one, origin the other."""
    quant = tmp_path / "ct-nvfp4"
    write_quantized(base, quant, "ct-nvfp4")

    def add_weight(tensors):
        packed = tensors[f"{MODULE}.weight_packed"]
        tensors[f"{MODULE}.weight"] = packed if stored == "U8" else f32(0.0, (64, 64))

    rewrite(quant, add_weight)
    for args in (["diff", base, quant], ["origin", quant, base]):
        code, stderr = run(*args)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "internal error" not in stderr, (args[0], stderr)
        assert f"{MODULE}.weight' beside '{MODULE}.weight_packed'" in lines[0]


def test_a_copy_of_the_quant_is_no_candidate_either(tmp_path, base):
    quant = tmp_path / "q"
    write_quantized(base, quant, "modelopt-fp8")
    copy = shutil.copytree(quant, tmp_path / "copy")
    code, stderr = run("origin", quant, base, copy)
    assert code == 2 and "a quantized checkpoint (modelopt FP8) as CANDIDATE" in stderr
