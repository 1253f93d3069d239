"""`surgeon origin` on hostile input: a quantized checkpoint named as a CANDIDATE (the quant
itself included) is one line and exit 2, as `surgeon diff` refuses one as BASE; damaged
scales (NaN, inf, subnormal, zero fp16 fields) and NaN or huge candidate weights are judged
without a warning on stderr (numpy's RuntimeWarnings are turned into errors here, so one
that escapes is an internal error), and a scale that is not finite is evidence of nothing."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from gguf.constants import GGML_QUANT_SIZES
from safetensors.numpy import load_file

from surgeon.cli.main import main
from surgeon.format.gguf_codes import affine_grid, agreement_mask
from tests.diff.test_quant_diff import write_folder
from tests.format.test_gguf_codes import K_QUANTS, LEGACY, SCALE_FIELDS, _valid_blocks
from tests.gguf_fixtures import convert_checkpoint, save_hf
from tests.quantized_fixtures import write_quantized

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf("llama", tmp_path_factory.mktemp("hostile") / "base", seed=0)


def origin(*args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `surgeon origin ARGS --no-progress`, RuntimeWarnings as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = CliRunner().invoke(main, ["origin", *map(str, args), "--no-progress"])
    return result.exit_code, result.stdout, result.stderr


def one_line(code: int, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("surgeon: error: "), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("scheme", ["modelopt-nvfp4", "ct-fp8-channel"])
def test_the_quant_itself_as_a_candidate_is_one_line(tmp_path, base, scheme):
    quant = tmp_path / scheme
    write_quantized(base, quant, scheme)
    line = one_line(*origin(quant, base, quant)[::2])
    assert f"{quant}: a quantized checkpoint" in line and "as CANDIDATE" in line


def test_a_quantized_candidate_of_a_gguf_is_one_line(tmp_path, base):
    """Its codes would be read as if they were weights: 26% agreement with its own source."""
    quant = tmp_path / "fp8"
    write_quantized(base, quant, "hf-fp8-block")
    gguf = convert_checkpoint(base, tmp_path / "b.Q8_0.gguf", "llama", "Q8_0")
    line = one_line(*origin(gguf, base, quant)[::2])
    assert f"{quant}: a quantized checkpoint (fp8 FP8) as CANDIDATE" in line


@pytest.mark.parametrize("damage", ["nan", "inf", "huge"])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_nan_or_huge_candidate_weights_are_judged_without_warnings(tmp_path, base, qtype, damage):
    """Tier 1 re-encodes the candidate with gguf-py, whose casts warn on NaN and on values
    fp16 cannot hold: a candidate that differs, not trouble."""
    tensors = load_file(base / "model.safetensors")
    q = tensors[Q_PROJ].copy()
    q[3] = {"nan": np.nan, "inf": np.inf, "huge": 3e38}[damage]
    tensors[Q_PROJ] = q
    bad = write_folder(base, tmp_path / "bad", tensors)
    gguf = convert_checkpoint(base, tmp_path / f"b.{qtype}.gguf", "llama", qtype)
    code, stdout, stderr = origin(gguf, bad, "--json")
    assert code == 1 and stderr == ""
    (candidate,) = json.loads(stdout)["candidates"]
    assert [t["name"] for t in candidate["differing"]] == [Q_PROJ]


FP16_BITS = {"nan": 0x7E00, "inf": 0x7C00, "subnormal": 0x0001, "zero": 0x0000}


@pytest.mark.parametrize("value", list(FP16_BITS))
@pytest.mark.parametrize("qtype", LEGACY + K_QUANTS, ids=lambda t: t.name)
def test_damaged_block_scales_are_decoded_and_compared_quietly(qtype, value):
    """Every scale field of every other block set to NaN, inf, the smallest subnormal or 0:
    no warning; a sub-block whose scale or offset is not finite agrees in no element (its
    codes say nothing about the weights); the undamaged blocks agree with their own values."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = _valid_blocks(qtype, rows=4, blocks_per_row=2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        source = affine_grid(raw, qtype).values()
        blocks = raw.reshape(-1, size).copy()
        for at in SCALE_FIELDS[qtype].values():
            blocks[::2, at : at + 2] = np.array([FP16_BITS[value]], dtype="<u2").view(np.uint8)
        damaged = blocks.reshape(raw.shape)
        grid = affine_grid(damaged, qtype)
        mask = agreement_mask(damaged, qtype, source)
    per_block = mask.reshape(-1, block)
    assert per_block[1::2].all()  # untouched blocks: their own values agree
    finite = np.isfinite(grid.scale) & np.isfinite(grid.offset)
    assert not mask[~finite.reshape(mask.shape)].any()
    if value in ("nan", "inf"):
        assert not per_block[::2].any()


@pytest.mark.parametrize("command", ["origin", "diff"])
def test_an_output_over_a_linked_quant_is_refused(tmp_path, base, command):
    """A Hub cache's snapshot holds links to its blobs: `-o` over the link named as QUANT
    would leave the blob but replace the input with the report."""
    gguf = convert_checkpoint(base, tmp_path / "blob", "llama", "Q8_0")
    link = tmp_path / "m.Q8_0.gguf"
    link.symlink_to(gguf.name)
    args = [link, base] if command == "origin" else [base, link]
    result = CliRunner().invoke(main, [command, *map(str, args), "-o", str(link), "--force"])
    line = one_line(result.exit_code, result.stderr)
    assert "refusing to write over the input checkpoint" in line
    assert link.is_symlink() and link.resolve() == gguf
