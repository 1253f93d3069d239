"""surgeon.format.gguf_codes against gguf-py 0.19's gguf.quants: the grid decodes as
`dequantize` does, bit for bit, on valid random blocks of every type covered and on blocks
gguf-py quantized; agreement counts what it should on the weights a quant was made from, on
jittered, pruned, rescaled and unrelated candidates."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from surgeon.errors import SurgeonError
from surgeon.format.gguf import open_gguf
from surgeon.format.gguf_codes import affine_grid, agreement, row_codes_agree, supports

Q = GGMLQuantizationType
LEGACY = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)
K_QUANTS = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
# Byte offsets of each block's fp16 scale fields, from ggml-common.h's structs: d (and m or
# dmin) lead the legacy blocks and Q4_K/Q5_K; Q2_K ends with d, dmin; Q3_K and Q6_K with d.
SCALE_FIELDS = {
    Q.Q4_0: {"d": 0},
    Q.Q4_1: {"d": 0, "m": 2},
    Q.Q5_0: {"d": 0},
    Q.Q5_1: {"d": 0, "m": 2},
    Q.Q8_0: {"d": 0},
    Q.Q2_K: {"d": 80, "m": 82},
    Q.Q3_K: {"d": 108},
    Q.Q4_K: {"d": 0, "m": 2},
    Q.Q5_K: {"d": 0, "m": 2},
    Q.Q6_K: {"d": 208},
}


def _valid_blocks(qtype: Q, rows: int, blocks_per_row: int, seed: int = 0) -> np.ndarray:
    """Random block rows with finite fp16 scales: random bytes for every code and sub-scale,
    then each super-scale d (and dmin) set to a positive fp16 in [1e-3, 1e-1] (weights'
    magnitudes), a legacy min m to a signed one of the block's range."""
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, size), dtype=np.uint8)
    for name, at in SCALE_FIELDS[qtype].items():
        value = 10 ** rng.uniform(-3, -1, size=raw.shape[0])
        if name == "m" and qtype in LEGACY:
            value = rng.uniform(-16, 0, size=raw.shape[0]) * value
        raw[:, at : at + 2] = value.astype("<f2").view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, blocks_per_row * size)


def _bits(values: np.ndarray) -> np.ndarray:
    return values.view(np.uint32)


@pytest.mark.parametrize("qtype", LEGACY + K_QUANTS, ids=lambda t: t.name)
def test_the_grid_decodes_valid_random_blocks_as_gguf_py_bit_for_bit(qtype):
    # Bit-exact, not merely close: an fp16 scale times a sub-scale of at most 8 bits times a
    # code of at most 8 bits is exact in float32 (at most 24 significant bits) but for Q6_K,
    # where both compute (d * scale) * code in that order; the one rounding left is the
    # offset's addition, the same float32 operation as gguf-py's `d * q - dm` or `d * q + m`.
    raw = _valid_blocks(qtype, rows=16, blocks_per_row=3)
    grid = affine_grid(raw, qtype)
    expected = dequantize(raw, qtype)
    np.testing.assert_array_equal(_bits(grid.values()), _bits(expected))
    assert grid.codes.shape == expected.shape
    assert grid.qmin <= grid.codes.min() and grid.codes.max() <= grid.qmax
    # random bytes reach both ends of the code range
    assert (grid.codes.min(), grid.codes.max()) == (grid.qmin, grid.qmax)


@pytest.mark.parametrize("qtype", LEGACY + K_QUANTS, ids=lambda t: t.name)
def test_the_grid_decodes_fully_random_bytes_where_gguf_py_gets_numbers(qtype):
    # random fp16 scales too: subnormal, huge, negative, infinite and NaN ones
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(32, 2 * GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected, got = dequantize(raw, qtype), affine_grid(raw, qtype).values()
    assert np.isfinite(expected).mean() > 0.8
    np.testing.assert_array_equal(got, expected)  # NaNs in the same places


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda t: t.name)
def test_the_grid_decodes_blocks_gguf_py_quantized(qtype):
    weights = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    raw = quantize(weights, qtype)
    np.testing.assert_array_equal(_bits(affine_grid(raw, qtype).values()), _bits(dequantize(raw, qtype)))


def test_the_grid_exposes_per_element_scales_and_offsets():
    raw = _valid_blocks(Q.Q4_K, rows=2, blocks_per_row=2)
    grid = affine_grid(raw, Q.Q4_K)
    assert (grid.group, grid.sub_scale.shape, grid.scale.shape) == (32, (2, 16), (2, 512))
    np.testing.assert_array_equal(grid.scale[:, 32:64], np.broadcast_to(grid.sub_scale[:, 1:2], (2, 32)))
    np.testing.assert_array_equal(grid.scale * grid.codes + grid.offset, dequantize(raw, Q.Q4_K))


# --- agreement: the weights a quant was made from, and others ---


def _gaussian(rows: int = 64, cols: int = 1024, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


@pytest.mark.parametrize(
    ("qtype", "at_least"),
    # Measured on these 65,536 Gaussian weights (gguf 0.19): Q4_0 99.95%, Q4_1 99.82%, Q5_0
    # 99.92%, Q5_1 99.63%, Q8_0 99.24%; the worst row 98.5% (Q8_0). Not 100%: llama.cpp (and
    # gguf-py after it) rounds the legacy codes with the float32 scale and then stores it as
    # fp16, so with the stored scale an element within 2**-11 of its code's magnitude of a
    # rounding boundary can flip; the more codes, the more boundaries, the more flips (Q8_0).
    # The K-quants have no such loss.
    [(Q.Q4_0, 0.999), (Q.Q4_1, 0.998), (Q.Q5_0, 0.999), (Q.Q5_1, 0.996), (Q.Q8_0, 0.99)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_a_legacy_quant_agrees_with_its_own_weights_bar_fp16_scale_flips(qtype, at_least):
    weights = _gaussian()
    raw = quantize(weights, qtype)
    counts = agreement(raw, qtype, weights)
    assert counts.dtype == np.int64 and counts.shape == (64,)
    assert at_least <= counts.sum() / weights.size < 1
    assert counts.min() >= 0.97 * weights.shape[1]


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda t: t.name)
def test_a_zeroed_or_rescaled_row_agrees_far_less(qtype):
    weights = _gaussian()
    raw = quantize(weights, qtype)
    changed = weights.copy()
    changed[5] = 0
    changed[9] *= 1.5
    counts = agreement(raw, qtype, changed) / weights.shape[1]
    # measured: zeroed 0.124 (Q4_0) down to 0.008 (Q8_0), x1.5 0.301 (Q4_1) down to 0.027 (Q8_0)
    assert counts[5] < 0.15 and counts[9] < 0.35
    assert np.delete(counts, [5, 9]).min() > 0.97


@pytest.mark.parametrize(
    ("qtype", "unrelated", "noisy"),
    # Measured (gguf 0.19, these weights and seeds): the fraction of codes that agree for an
    # unrelated Gaussian candidate of the same scale, and for the true weights plus Gaussian
    # noise of 1% of their standard deviation. Q4_0 (16 codes, step ~0.4 sigma): unrelated
    # 0.082, noisy 0.972. Q8_0 (256 codes, step ~0.026 sigma): unrelated 0.0056, noisy 0.579:
    # 1% noise is 0.4 of a Q8_0 step, so a fine quant must not ask for near-total agreement
    # from a lightly changed (healed) candidate, while an unrelated one stays near the chance
    # that two draws share a code. Q4_1 0.079 / 0.972, Q5_0 0.042 / 0.945, Q5_1 0.039 / 0.942.
    [
        (Q.Q4_0, 0.082, 0.972),
        (Q.Q4_1, 0.079, 0.972),
        (Q.Q5_0, 0.042, 0.945),
        (Q.Q5_1, 0.039, 0.942),
        (Q.Q8_0, 0.0056, 0.579),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_unrelated_and_noisy_candidates_agree_as_measured(qtype, unrelated, noisy):
    weights = _gaussian()
    raw = quantize(weights, qtype)
    other = _gaussian(seed=4)
    noise = 0.01 * weights.std() * _gaussian(seed=5)
    fraction = {
        name: agreement(raw, qtype, cand).sum() / weights.size
        for name, cand in (("unrelated", other), ("noisy", weights + noise))
    }
    assert fraction["unrelated"] == pytest.approx(unrelated, abs=0.003)
    assert fraction["noisy"] == pytest.approx(noisy, abs=0.005)


def _jittered(raw: np.ndarray, qtype: Q, low: float, high: float, seed: int = 6) -> np.ndarray:
    """The quant's own decoded values, each moved by a random fraction in [low, high) of its
    sub-block's step, either way."""
    grid = affine_grid(raw, qtype)
    rng = np.random.default_rng(seed)
    step = np.abs(grid.scale) * rng.uniform(low, high, size=grid.codes.shape) * rng.choice([-1, 1], grid.codes.shape)
    return (grid.values() + step).astype(np.float32)


@pytest.mark.parametrize("qtype", K_QUANTS + LEGACY, ids=lambda t: t.name)
def test_values_within_a_tenth_of_a_step_of_the_grid_agree_everywhere(qtype):
    raw = _valid_blocks(qtype, rows=32, blocks_per_row=2)
    row_len = affine_grid(raw, qtype).codes.shape[1]
    np.testing.assert_array_equal(agreement(raw, qtype, dequantize(raw, qtype)), row_len)
    np.testing.assert_array_equal(agreement(raw, qtype, _jittered(raw, qtype, 0.0, 0.1)), row_len)


@pytest.mark.parametrize(
    ("qtype", "at_most"),
    # Moved 0.6 to 1.4 steps, a value rounds to a neighbouring code unless the clamp at an
    # end of the range brings it back (half of the 2 end codes in `levels`) or its sub-block's
    # scale is 0 (random sub-scales: 1 in 16 for Q2_K, 1 in 64 for Q3_K/Q4_K/Q5_K, 1 in 256
    # for Q6_K), so about 1/levels + P(scale 0): measured Q2_K 0.302, Q3_K 0.140, Q4_K 0.077,
    # Q5_K 0.049, Q6_K 0.017, against 1.0 within a tenth of a step.
    [(Q.Q2_K, 0.32), (Q.Q3_K, 0.15), (Q.Q4_K, 0.085), (Q.Q5_K, 0.055), (Q.Q6_K, 0.02)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_values_a_step_off_the_grid_agree_far_less(qtype, at_most):
    raw = _valid_blocks(qtype, rows=32, blocks_per_row=2)
    candidate = _jittered(raw, qtype, 0.6, 1.4)
    assert agreement(raw, qtype, candidate).sum() / candidate.size <= at_most


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_a_pruned_row_of_a_k_quant_disagrees_only_there(qtype):
    raw = _valid_blocks(qtype, rows=8, blocks_per_row=2)
    candidate = dequantize(raw, qtype)
    candidate[3] = 0
    counts = agreement(raw, qtype, candidate) / candidate.shape[1]
    assert counts[3] < 0.5
    np.testing.assert_array_equal(np.delete(counts, 3), 1.0)


def test_a_sub_block_of_scale_zero_agrees_only_with_its_decoded_value():
    # Q4_0 with d = 0: every code decodes to 0, whatever it is
    raw = _valid_blocks(Q.Q4_0, rows=1, blocks_per_row=2)
    raw[0, 0:2] = 0
    zeros = np.zeros((1, 64), dtype=np.float32)
    assert agreement(raw, Q.Q4_0, zeros)[0] == 64 - np.count_nonzero(affine_grid(raw, Q.Q4_0).codes[0, 32:])
    candidate = dequantize(raw, Q.Q4_0)
    candidate[0, :3] = [1e-8, -0.0, np.nan]
    assert agreement(raw, Q.Q4_0, candidate)[0] == 64 - 2  # -0.0 is 0.0; 1e-8 and NaN are not


def test_non_finite_candidates_never_agree():
    raw = _valid_blocks(Q.Q6_K, rows=1, blocks_per_row=1)
    candidate = dequantize(raw, Q.Q6_K)
    candidate[0, :3] = [np.inf, -np.inf, np.nan]  # inf would clamp to an end code
    assert agreement(raw, Q.Q6_K, candidate)[0] == 256 - 3


def test_supported_types_are_the_affine_ones():
    covered = {t for t in Q if supports(t)}
    assert covered == set(LEGACY + K_QUANTS)
    for qtype in (Q.IQ4_NL, Q.IQ2_XXS, Q.TQ1_0, Q.MXFP4, Q.NVFP4, Q.F16, Q.BF16, Q.Q8_K):
        assert not supports(qtype)


def test_bad_input_is_one_surgeon_error():
    raw = _valid_blocks(Q.Q4_K, rows=2, blocks_per_row=1)
    with pytest.raises(SurgeonError, match="IQ4_NL stores no affine codes"):
        affine_grid(raw[:, :18], Q.IQ4_NL)
    with pytest.raises(SurgeonError, match=r"multiple of 144 bytes"):
        affine_grid(raw[:, :100], Q.Q4_K)
    with pytest.raises(SurgeonError, match=r"multiple of 144 bytes"):
        affine_grid(raw.view(np.int8), Q.Q4_K)
    with pytest.raises(SurgeonError, match=r"candidate rows \(2, 255\)"):
        agreement(raw, Q.Q4_K, np.zeros((2, 255), np.float32))


# --- row_codes_agree: from a GGUF file ---


def _gguf(path, tensors: dict[str, tuple[np.ndarray, Q]]):
    writer = GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 1)
    for name, (raw, qtype) in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return open_gguf(path)


def test_rows_of_a_gguf_tensor_agree_with_their_source(tmp_path):
    raw = _valid_blocks(Q.Q5_K, rows=12, blocks_per_row=2)
    iq = np.random.default_rng(7).integers(0, 256, size=(2, GGML_QUANT_SIZES[Q.IQ4_NL][1]), dtype=np.uint8)
    model = _gguf(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": (raw, Q.Q5_K), "iq": (iq, Q.IQ4_NL)})
    source = dequantize(raw, Q.Q5_K)
    source[7] *= -1
    counts = row_codes_agree(model, "blk.0.ffn_up.weight", 4, 10, source[4:10])
    np.testing.assert_array_equal(counts, agreement(raw[4:10], Q.Q5_K, source[4:10]))
    assert list(counts == 512) == [True, True, True, False, True, True]
    with pytest.raises(SurgeonError, match=r"tensor 'iq' is IQ4_NL, whose values are not affine"):
        row_codes_agree(model, "iq", 0, 1, np.zeros((1, 32), np.float32))
    with pytest.raises(SurgeonError, match="rows 0:13"):
        row_codes_agree(model, "blk.0.ffn_up.weight", 0, 13, np.zeros((13, 512), np.float32))


# --- rounding at exact ties: measure zero on real weights, matched anyway ---


@pytest.mark.parametrize(
    ("qtype", "low", "high"),
    [(Q.Q4_0, -8, 7), (Q.Q4_1, 0, 15), (Q.Q5_0, -16, 15), (Q.Q5_1, 0, 31), (Q.Q8_0, -127, 127)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_ties_round_as_gguf_py_quantizes_them(qtype, low, high):
    # blocks pinned so that the scale comes out exactly 1 (and 1/d too), every other value on
    # a half step: gguf-py's quantize (llama.cpp's rounding) says which way each tie goes
    rng = np.random.default_rng(8)
    ties = (rng.integers(low, high, size=(16, 32)) + 0.5).astype(np.float32)
    ties[:, 0], ties[:, 1] = low, high  # Q4_0/Q5_0: d = low / -8 or / -16; Q8_0: 127 / 127
    raw = quantize(ties, qtype)
    assert (affine_grid(raw, qtype).sub_scale == 1).all()
    np.testing.assert_array_equal(agreement(raw, qtype, ties), 32)


def _nearest_int(x: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int, literally: add 1.5 * 2**23 in float32, read the low bits."""
    val = (x.astype(np.float32) + np.float32(12582912.0)).view(np.int32)
    return (val & 0x007FFFFF) - 0x00400000


def test_k_quant_ties_round_half_to_even_as_nearest_int():
    raw = _valid_blocks(Q.Q6_K, rows=4, blocks_per_row=1)
    raw[:, 192:208] = 1  # every int8 sub-scale 1
    raw[:, 208:210] = np.array([1.0], "<f2").view(np.uint8)  # d = 1
    codes = affine_grid(raw, Q.Q6_K).codes
    candidate = (codes + 0.5).astype(np.float32)
    expected = (np.clip(_nearest_int(candidate), -32, 31) == codes).sum(axis=1)
    np.testing.assert_array_equal(agreement(raw, Q.Q6_K, candidate), expected)
    assert 0.3 < expected.sum() / codes.size < 0.7  # about half of the ties go to the stored code
