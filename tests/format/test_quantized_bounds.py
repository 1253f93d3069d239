"""The measured quantization bounds: every stored layout has one, they hold on weights the
measurement never saw, and they still tell a quantized parent from a pruned or healed one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from surgeon.format.quant_bounds import MEASURED, NOT_MEANINGFUL, QUANT_BOUNDS, TOO_COARSE, UNMEASURED, bound_for
from surgeon.format.requantize import quantize_fp8, quantize_nvfp4

HEALED_O_PROJ_NMSE = 0.14  # the README's healed o_proj against its parent (next-capabilities.md, section 1)


def nmse(w: np.ndarray, deq: np.ndarray) -> tuple[float, float]:
    err = ((deq.astype(np.float64) - w) ** 2).sum(axis=1)
    energy = (w.astype(np.float64) ** 2).sum(axis=1)
    return float(err.sum() / energy.sum()), float((err / energy).max())


def unseen_weights() -> list[np.ndarray]:
    """Seeds and shapes the benchmark did not use (it used seeds 0-4 at 256 x 1024)."""
    rng = np.random.default_rng(1234)
    return [
        (rng.standard_normal((192, 768)) * 0.05).astype(np.float32),
        (rng.standard_t(3, (192, 768)) * 0.01).astype(np.float32),
        (rng.laplace(size=(96, 1536)) * 0.02).astype(np.float32),
    ]


OURS = {
    "NVFP4": lambda w: quantize_nvfp4(w).dequantized,
    "FP8_E4M3 per-tensor": lambda w: quantize_fp8(w, "tensor").dequantized,
    "FP8_E4M3 per-channel": lambda w: quantize_fp8(w, "channel").dequantized,
    "FP8_E4M3 block 128x128": lambda w: quantize_fp8(w, (128, 128)).dequantized,
}


@pytest.mark.parametrize("storage", list(OURS))
def test_our_quantizers_stay_within_their_bounds_on_unseen_weights(storage):
    bound = QUANT_BOUNDS[storage]
    for w in unseen_weights():
        whole, row = nmse(w, OURS[storage](w))
        assert whole <= bound.tensor and row <= bound.row, (storage, whole, row)


@pytest.mark.parametrize("qtype", ["BF16", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4"])
def test_gguf_types_stay_within_their_bounds_on_unseen_weights(qtype):
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    kind = GGMLQuantizationType[qtype]
    bound = QUANT_BOUNDS[qtype]
    for w in unseen_weights():
        whole, row = nmse(w, quants.dequantize(quants.quantize(w, kind), kind))
        assert whole <= bound.tensor and row <= bound.row, (qtype, whole, row)


def test_measured_bounds_still_separate_a_pruned_or_healed_parent():
    for name, bound in QUANT_BOUNDS.items():
        if bound.status == MEASURED:
            assert bound.tensor is not None and bound.row is not None
            assert bound.tensor < HEALED_O_PROJ_NMSE / 2, name
            assert bound.row < 0.5, name  # a zeroed head's rows have NMSE 1.0


def test_every_layout_the_reader_names_has_a_bound():
    for storage in ("NVFP4", "FP8_E4M3 per-tensor", "FP8_E4M3 per-channel", "FP8_E4M3 block 128x128"):
        assert bound_for(storage).status == MEASURED
    loosest = bound_for("FP8_E4M3 block 32x32")  # a granularity not measured: the loosest FP8
    fp8 = [b for n, b in QUANT_BOUNDS.items() if n.startswith("FP8_E4M3")]
    assert loosest.tensor == max(b.tensor for b in fp8) and loosest.row == max(b.row for b in fp8)


def test_k_quants_and_iq_types_are_measured_and_the_coarse_ones_left_unverified():
    # what a Q4_K_M / Q5_K_M / Q6_K / IQ4_XS file holds, 256-wide fallbacks (Q5_0, Q5_1, Q8_0, IQ4_NL) included
    for kind in ("Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q5_0", "Q5_1", "Q8_0"):
        assert bound_for(kind).status == MEASURED, kind
    coarse = ("Q3_K", "Q2_K", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_S", "IQ1_M")
    for kind in coarse:
        bound = bound_for(kind)
        assert bound.status == TOO_COARSE and bound.tensor is not None and bound.row is not None, kind
        # too coarse means it: a heal or a zeroed head could hide in its quantization error
        assert bound.tensor >= HEALED_O_PROJ_NMSE / 2 or bound.row >= 0.5, kind
    assert {n for n, b in QUANT_BOUNDS.items() if b.status == TOO_COARSE} == set(coarse)
    assert bound_for("Q8_K").status == UNMEASURED  # llama.cpp's dot-product intermediate, never stored


def test_k_quant_bounds_shrink_with_bits():
    ladder = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    for coarser, finer in itertools.pairwise(ladder):
        assert QUANT_BOUNDS[coarser].tensor > QUANT_BOUNDS[finer].tensor, (coarser, finer)
    iq = ["IQ1_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"]
    for coarser, finer in itertools.pairwise(iq):
        assert QUANT_BOUNDS[coarser].tensor >= QUANT_BOUNDS[finer].tensor, (coarser, finer)


def test_ternary_and_unknown_types_have_no_bound():
    assert bound_for("TQ2_0").status == NOT_MEANINGFUL and bound_for("TQ2_0").tensor is None
    assert bound_for("NO_SUCH_TYPE").status == UNMEASURED
