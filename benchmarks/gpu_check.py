"""The GPU path of `surgeon prune`, checked in one prepared run (see gpu_check.sh).

Builds (once) a synthetic llama-like bf16 model of --size-gb on this machine, prunes every
layer on --device, and prints the pipeline time, the time per layer, the peak device memory
against what one layer + the calibration stream + G should take, and the ratio of device to
CPU time for one layer. Also runs with --device cpu (no CUDA needed), for a dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_prune import ensure_big_model, make_big_plan  # noqa: E402


class _StopAfterFirst(Exception):
    pass


def prune_layers(model: Path, device: str, layers: str, first_only: bool) -> dict:
    import torch

    from surgeon.prune.engine import PruneOptions, prune
    from surgeon.runtime.settings import RunSettings

    per_layer, peaks = [], []

    def on_layer(result) -> None:
        per_layer.append({"layer": result.layer, "seconds": result.seconds, "pruned": result.pruned})
        if torch.cuda.is_available() and device.startswith("cuda"):
            peaks.append(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        if first_only:
            raise _StopAfterFirst()

    options = PruneOptions(
        prune_frac=0.125, layers=layers, run=RunSettings(device=device), calib_samples=32, max_tokens=128
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=model.parent) as scratch:
        try:
            result = prune(model, Path(scratch) / "out", options, on_layer_done=on_layer)
            manifest = result.manifest
        except _StopAfterFirst:
            manifest = None
    return {
        "seconds": time.perf_counter() - started,
        "layers": per_layer,
        "peak_bytes_per_layer": peaks,
        "timings": manifest["timings"] if manifest else None,
        "layer_passes": manifest["layer_passes"] if manifest else None,
    }


def expected_bytes(model: Path, tokens: int) -> int:
    """One decoder layer in bf16 + the stream (bf16, in and out) + G (fp32, heads x head_dim)."""
    config = json.loads((model / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv, dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    layer = 2 * (hidden * heads * dim * 2 + hidden * kv * dim * 2 + 3 * hidden * inter)
    return layer + 2 * 2 * tokens * hidden + 4 * (heads * dim) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size-gb", type=float, default=None, help="default 6 on cuda, 2 on cpu")
    parser.add_argument("--data-dir", type=Path, default=HERE / "_data" / "gpu")
    args = parser.parse_args()
    size = args.size_gb or (6.0 if args.device.startswith("cuda") else 2.0)
    plan = make_big_plan(size)
    model = ensure_big_model(args.data_dir, plan)
    run = prune_layers(model, args.device, "all", first_only=False)
    cpu_first = prune_layers(model, "cpu", "0", first_only=True)
    device_first = run["layers"][0]["seconds"]
    tokens = 32 * 128
    summary = {
        "device": args.device,
        "model_gb": sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e9,
        "pipeline_seconds": run["seconds"],
        "seconds_per_layer": [round(layer["seconds"], 3) for layer in run["layers"]],
        "layer_passes": run["layer_passes"],
        "timings": run["timings"],
        "peak_device_bytes": max(run["peak_bytes_per_layer"], default=None),
        "expected_bytes_upper": expected_bytes(model, tokens),
        "layer0_device_vs_cpu": device_first / cpu_first["layers"][0]["seconds"],
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
