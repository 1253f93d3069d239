import numpy as np
import pytest
import torch

from surgeon.format.dtypes import DTYPES, float32_to_bf16_bits, raw_view, to_float64


def decode(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    return to_float64(raw_view(raw, DTYPES[dtype]), DTYPES[dtype])


@pytest.mark.parametrize(
    "torch_dtype, name",
    [
        (torch.bfloat16, "BF16"),
        (torch.float16, "F16"),
        (torch.float8_e4m3fn, "F8_E4M3"),
        (torch.float8_e5m2, "F8_E5M2"),
    ],
)
def test_decoding_matches_torch_for_every_bit_pattern(torch_dtype, name):
    bits = 8 if "F8" in name else 16
    codes = torch.arange(2**bits, dtype=torch.int32).to(torch.uint8 if bits == 8 else torch.int16)
    if bits == 16:
        codes = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = codes.view(torch_dtype)
    expected = values.to(torch.float64).numpy()
    got = decode(values, name)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_array_equal(got[finite], expected[finite])


def test_integer_dtypes_decode_exactly():
    values = torch.tensor([-3, 0, 7], dtype=torch.int64)
    assert decode(values, "I64").tolist() == [-3.0, 0.0, 7.0]


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    ours = float32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
