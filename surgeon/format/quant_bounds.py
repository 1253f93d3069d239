"""How far a quantized tensor may sit from its float parent and still be "within quantization
error": an NMSE bound (sum((deq - w)^2) / sum(w^2)) per storage type, over a whole tensor and
over one row (the smallest per-head row group the diff judges).

Measured, not guessed: benchmarks/bench_quant_bounds.py, 2026-12-07 (numpy, gguf 0.19.0), on
5+5 synthetic 256 x 1024 weights (sigma 0.02, Gaussian and Student-t(3)) and every 2-d tensor
of SmolLM2-135M-Instruct (211 matrices, 134M weights); the table and its caveats are in
docs/quant-bounds.md. Each bound is 2x the largest NMSE measured on any of those tensors,
rounded up to two significant digits. For scale, a zeroed head has NMSE 1.0 on its rows and
the README's healed o_proj about 0.14 (docs/reference next-capabilities, section 1).

The K-quants and IQ types were measured the same way with llama.cpp's own quantizer (the
commit llama-cpp-python 0.3.36 vendors, through ctypes: benchmarks/bench_quant_bounds.py
--llamacpp, 2026-12-08), each with an importance matrix and, where llama-quantize allows it,
without one, the larger counting. The 256-wide types saw only SmolLM2's 30 down_proj
(576 x 1536) of its real tensors. Types whose bound cannot tell quantization from an edit
(tensor bound above half the healed o_proj's NMSE, or row bound above 0.5, where a zeroed head
is 1.0) are "too coarse": their numbers are kept, but the diff leaves them unverified.

Keys are gguf's GGMLQuantizationType names and the storage names of quantized.py.
"""

from __future__ import annotations

from dataclasses import dataclass

MEASURED = "measured"
UNMEASURED = "unmeasured"
NOT_MEANINGFUL = "not meaningful"
TOO_COARSE = "too coarse"  # measured, but as large as the edits the diff must catch


@dataclass(frozen=True)
class QuantBound:
    tensor: float | None  # the largest NMSE of a whole tensor still within quantization error
    row: float | None  # the same for one row
    status: str = MEASURED
    note: str = ""


def _measured(tensor: float, row: float, note: str = "") -> QuantBound:
    return QuantBound(tensor, row, MEASURED, note)


_DETERMINISTIC = "deterministic: re-encode the candidate and compare bytes instead"
_COARSE_NOTE = "its quantization error is as large as a heal's or a zeroed head's: the diff cannot tell them apart"


def _coarse(tensor: float, row: float) -> QuantBound:
    return QuantBound(tensor, row, TOO_COARSE, _COARSE_NOTE)


# fmt: off
QUANT_BOUNDS: dict[str, QuantBound] = {
    # comments: the largest NMSE measured on any tensor / on any row; the bounds are twice that
    "F32": QuantBound(0.0, 0.0, MEASURED, "exact"),
    "F16": _measured(8.7e-08, 1.8e-07, _DETERMINISTIC + "; subnormals (< 6.1e-5) lose more"),  # 4.3e-08 / 8.9e-08
    "BF16": _measured(5.6e-06, 1.3e-05, _DETERMINISTIC),  # 2.8e-06 / 6.2e-06
    "Q4_0": _measured(0.034, 0.069),  # 0.017 / 0.034
    "Q4_1": _measured(0.021, 0.038, "from synthetic weights: the real model sits on a Q4_1 grid"),  # 0.01 / 0.019
    "Q5_0": _measured(0.0089, 0.029),  # 0.0044 / 0.014
    "Q5_1": _measured(0.0057, 0.016),  # 0.0028 / 0.0077
    "Q8_0": _measured(0.00015, 0.0004),  # 7.4e-05 / 0.0002
    "MXFP4": _measured(0.044, 0.11),  # 0.022 / 0.05
    "NVFP4": _measured(0.019, 0.034, "ModelOpt's and compressed-tensors' conventions measure alike"),  # 0.0091 / 0.017
    "FP8_E4M3 per-tensor": _measured(0.0015, 0.0045),  # 0.00072 / 0.0022
    "FP8_E4M3 per-channel": _measured(0.0015, 0.0021),  # 0.0007 / 0.001
    "FP8_E4M3 block 128x128": _measured(0.0015, 0.0032),  # 0.00071 / 0.0016
    # ternary: 0.69 / 0.84 on weights not trained ternary, as large as the signal itself
    "TQ1_0": QuantBound(None, None, NOT_MEANINGFUL, "ternary: compare a ternary model only with itself"),
    "TQ2_0": QuantBound(None, None, NOT_MEANINGFUL, "ternary: compare a ternary model only with itself"),
    # llama.cpp's quantizer, with and without an importance matrix (the larger); the real
    # model's Q4_1 grid makes Q4_K/Q5_K nearly exact on it, their bounds come from synthetic
    "Q4_K": _measured(0.02, 0.029),  # 0.0097 / 0.014
    "Q5_K": _measured(0.0049, 0.0073),  # 0.0024 / 0.0036
    "Q6_K": _measured(0.0016, 0.0062),  # 0.00078 / 0.0031
    "IQ4_NL": _measured(0.023, 0.063),  # 0.011 / 0.031
    "IQ4_XS": _measured(0.023, 0.058),  # 0.011 / 0.029
    "Q3_K": _coarse(0.079, 0.15),  # 0.039 / 0.072
    "Q2_K": _coarse(0.26, 0.4),  # 0.13 / 0.2
    "IQ3_S": _coarse(0.11, 0.25),  # 0.052 / 0.12
    "IQ3_XXS": _coarse(0.16, 0.63),  # 0.076 / 0.31
    "IQ2_S": _coarse(0.33, 1.1),  # 0.16 / 0.5
    "IQ2_XS": _coarse(0.39, 1.1),  # 0.19 / 0.53
    "IQ2_XXS": _coarse(0.59, 2.1),  # 0.29 / 1.0
    "IQ1_S": _coarse(0.85, 1.5),  # 0.42 / 0.74
    "IQ1_M": _coarse(0.64, 1.6),  # 0.32 / 0.78
    # never a storage type: llama.cpp's intermediate for dot products
    "Q8_K": QuantBound(None, None, UNMEASURED, "llama.cpp's dot-product intermediate, not a storage type"),
}
# fmt: on


def bound_for(storage: str) -> QuantBound:
    """The bound of a storage type; an FP8 E4M3 granularity not measured (another block, a
    group) takes the loosest FP8 bound: FP8's error is its 3-bit mantissa's, whatever the
    scale covers (0.0006-0.0007 median for all three measured). Unknown types are unmeasured."""
    if storage in QUANT_BOUNDS:
        return QUANT_BOUNDS[storage]
    if storage.startswith("FP8_E4M3"):
        measured = [b for name, b in QUANT_BOUNDS.items() if name.startswith("FP8_E4M3")]
        return QuantBound(
            max(b.tensor or 0.0 for b in measured), max(b.row or 0.0 for b in measured), MEASURED, "loosest FP8"
        )
    return QuantBound(None, None, UNMEASURED, "no measurement of this type")
