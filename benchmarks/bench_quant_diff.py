"""Benchmark `surgeon diff BASE QUANT.gguf` against `surgeon diff BASE OTHER` of the same weights.

Run: python benchmarks/bench_quant_diff.py [--gguf-gb 1.0] [--repeat 3] [--data-dir DIR]

Issue 20's goal: a GGUF diff of 1 GB runs in at most 2x a safetensors diff of the same weights
on 2 cores, with peak RSS under 300 MB. It builds (once, then reuses) under --data-dir:
- `base/`: a synthetic llama-like bf16 checkpoint (bench_diff.py's geometry and values: GQA,
  16 heads of 128, 4 kv heads), as many layers as make the GGUF --gguf-gb;
- `base.Q8_0.gguf`: BASE quantized to Q8_0 by gguf-py as llama.cpp's converter writes it
  (q and k rows permuted, norms F32);
- `other/`: the same weights as the GGUF, in the safetensors the diff reads best: each Q8_0
  tensor dequantized and rounded to bf16, in BASE's order. Every matrix differs from BASE, so
  the safetensors diff hashes both sides and computes its stats and per-head view on every one:
  the same question (how far is each tensor from BASE) asked of the same weights.
With every file in the page cache, each diff runs in its own child process (best wall of
--repeat runs, peak RSS from GNU time), and the ratio is printed with PASS/FAIL. The GGUF
holds about half the bytes of OTHER (8.5 bits a weight against 16).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_diff import (  # noqa: E402  (a sibling script, not a package)
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    SHARD_BYTES,
    llama_config,
    log,
    measure,
    rss_method,
    surgeon_command,
    tensor_bits,
    tensor_shapes,
    value_pool,
    warm_page_cache,
)

BUILD_VERSION = 1
Q8_0_BYTES_PER_WEIGHT = 34 / 32  # a block of 32 int8 codes and one float16 scale
GOAL_RATIO, GOAL_RSS_MB = 2.0, 300.0


def num_layers_for(gguf_gb: float) -> int:
    fixed = sum(math.prod(s) for _, s in tensor_shapes(0))
    per_layer = sum(math.prod(s) for _, s in tensor_shapes(1)) - fixed
    weights = gguf_gb * 1e9 / Q8_0_BYTES_PER_WEIGHT
    return max(1, round((weights - fixed) / per_layer))


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (conversion/llama.py)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(name: str) -> str:
    from gguf import MODEL_ARCH, get_tensor_name_map

    mapped = get_tensor_name_map(MODEL_ARCH.LLAMA, 1 << 10).get_name(name, try_suffixes=(".weight",))
    assert mapped is not None, name
    return mapped


def build(data_dir: Path, gguf_gb: float) -> tuple[Path, Path, Path]:
    layers = num_layers_for(gguf_gb)
    plan = {"version": BUILD_VERSION, "gguf_gb": gguf_gb, "layers": layers}
    base, other, gguf, marker = data_dir / "base", data_dir / "other", data_dir / "base.Q8_0.gguf", data_dir / "built"
    try:
        if json.loads(marker.read_text()) == plan:
            log(f"reusing {data_dir}")
            return base, other, gguf
    except (OSError, ValueError):
        pass
    started = time.perf_counter()
    marker.unlink(missing_ok=True)
    for folder in (base, other):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    shapes = tensor_shapes(layers)
    pool = value_pool()
    write_pair(shapes, pool, base, other, gguf)
    for folder in (base, other):
        (folder / "config.json").write_text(json.dumps(llama_config(layers), indent=2) + "\n")
    marker.write_text(json.dumps(plan))
    log(f"built {layers} layers in {data_dir} in {time.perf_counter() - started:.0f} s")
    return base, other, gguf


def write_pair(shapes, pool, base: Path, other: Path, gguf: Path) -> None:
    """BASE's shards, OTHER's and the GGUF, one tensor at a time (the GGUF streamed: its
    tensor infos first, then each tensor's data as it is quantized)."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    from surgeon.format.dtypes import float32_to_bf16_bits
    from surgeon.format.safetensors import TensorBytes, write_safetensors

    writer = GGUFWriter(gguf, "llama")
    config = llama_config(len([n for n, _ in shapes if n.endswith("q_proj.weight")]))
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    for name, shape in shapes:
        kind = GGMLQuantizationType.Q8_0 if len(shape) == 2 else GGMLQuantizationType.F32
        nbytes = math.prod(shape) * 4 if len(shape) == 1 else math.prod(shape) // 32 * 34
        writer.add_tensor_info(gguf_name(name), shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    shard, base_batch, other_batch, size = 0, [], [], 0
    for index, (name, shape) in enumerate(shapes):
        bits = tensor_bits(pool, index, math.prod(shape))
        values = (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if len(shape) == 1:
            writer.write_tensor_data(values)
            kept = bits
        else:
            stored = values
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                stored = permute(values, HEADS if "q_proj" in name else KV_HEADS)
            codes = quantize(stored, GGMLQuantizationType.Q8_0)
            writer.write_tensor_data(codes)
            kept = float32_to_bf16_bits(dequantized(codes, values.shape, name))
        base_batch.append(TensorBytes(name, "BF16", shape, memoryview(bits)))
        other_batch.append(TensorBytes(name, "BF16", shape, memoryview(kept.reshape(-1))))
        size += bits.nbytes
        if size >= SHARD_BYTES or index == len(shapes) - 1:
            shard += 1
            file = f"model-{shard:05d}.safetensors"
            write_safetensors(base / file, base_batch, {"format": "pt"})
            write_safetensors(other / file, other_batch, {"format": "pt"})
            base_batch, other_batch, size = [], [], 0
    writer.close()


def dequantized(codes: np.ndarray, shape, name: str) -> np.ndarray:
    """The GGUF tensor's values in BASE's order: what the quant diff compares with BASE."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    values = dequantize(codes, GGMLQuantizationType.Q8_0).reshape(shape)
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = HEADS if "q_proj" in name else KV_HEADS
        values = values.reshape(heads, HEAD_DIM // 2, 2, -1).swapaxes(1, 2).reshape(shape)
    return values


def run(args: argparse.Namespace) -> int:
    base, other, gguf = build(args.data_dir, args.gguf_gb)
    files = [*base.glob("*.safetensors"), *other.glob("*.safetensors"), gguf]
    surgeon = surgeon_command()
    cases = {
        "safetensors": [surgeon, "diff", str(base), str(other), "--json", "--no-progress", "--no-cache"],
        "gguf": [surgeon, "diff", str(base), str(gguf), "--json", "--no-progress"],
    }
    walls: dict[str, list[float]] = {k: [] for k in cases}
    rss: dict[str, list[float]] = {k: [] for k in cases}
    for number in range(args.repeat):
        warm_page_cache(files)
        for key, command in cases.items():
            result = measure(command, ok=(0, 1))
            walls[key].append(result.wall_s)
            rss[key].append(result.rss_mb)
            if number == 0:
                check(key, json.loads(result.stdout))
            log(f"round {number + 1}: {key} {result.wall_s:.2f} s, {result.rss_mb:.0f} MB")
    return report(args, base, other, gguf, walls, rss)


def check(key: str, report: dict) -> None:
    if key == "gguf" and not report["quant"]["made_from"]:
        raise SystemExit(f"the GGUF diff did not find its base: {report['summary']['text']}")
    if key == "safetensors" and report["summary"]["identical"]:
        raise SystemExit("the safetensors pair came out identical")


def report(args, base: Path, other: Path, gguf: Path, walls, rss) -> int:
    size = {p: sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (base, other)}
    ratio = min(walls["gguf"]) / min(walls["safetensors"])
    rows = [
        ("`surgeon diff base other` (safetensors, no hash cache)", "safetensors", size[other]),
        ("`surgeon diff base base.Q8_0.gguf`", "gguf", gguf.stat().st_size),
    ]
    print(f"base: {size[base] / 1e9:.2f} GB bf16; {rss_method()} for RSS; best of {args.repeat}")
    print("| run | other side | wall | peak RSS |")
    print("|---|---|---|---|")
    for label, key, nbytes in rows:
        print(f"| {label} | {nbytes / 1e9:.2f} GB | {min(walls[key]):.2f} s | {max(rss[key]):.0f} MB |")
    speed_ok, rss_ok = ratio <= GOAL_RATIO, max(rss["gguf"]) < GOAL_RSS_MB
    print(f"ratio GGUF / safetensors: {ratio:.2f} (goal <= {GOAL_RATIO}): {'PASS' if speed_ok else 'FAIL'}")
    print(f"GGUF diff peak RSS: {max(rss['gguf']):.0f} MB (goal < {GOAL_RSS_MB:.0f}): {'PASS' if rss_ok else 'FAIL'}")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf-gb", type=float, default=1.0, help="size of the Q8_0 GGUF (default 1.0 GB)")
    parser.add_argument("--repeat", type=int, default=3)
    default = Path(tempfile.gettempdir()) / "surgeon-bench-quant"
    parser.add_argument("--data-dir", type=Path, default=default, help=f"where the data is built (default {default})")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(run(parse_args()))
