"""Benchmark `surgeon prune`: layer passes, peak RSS on a 2 GB model, heal from G vs lstsq.

Run: python benchmarks/bench_prune.py [--size-gb 2.0] [--parts passes,rss,heal] [--json-out FILE]

1. passes: `surgeon prune` of the tiny trained Gemma 4 fixture (all layers, --prune-frac 0.25)
   with --importance recon, norm and loo-nll, against a naive re-run-per-layer capture done with
   transformers (the --naive sub-mode): decoder-layer passes counted, not computed.
2. rss: builds (once, then reuses) a llama-like bf16 checkpoint of --size-gb GiB under
   --data-dir, prunes every layer of it on the CPU in a child under GNU time, checks the output
   with `surgeon diff`, and compares the peak RSS with the model's size.
3. heal: the o_proj heal from G = X^T X (surgeon.prune.heal.heal_o_proj) against torch.linalg.lstsq
   on the stored activations, each in its own child (the --heal-child sub-mode).

Goals failing is a result, not an error: the exit status is 0 unless something crashed or a
correctness check failed. Sub-modes used as children: --naive FIXTURE and --heal-child MODE FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from bench_diff import (
    HEAD_DIM,
    HEADS,
    Goal,
    Run,
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIXTURE = REPO / "surgeon" / "_data" / "demo" / "model"  # the tiny trained model, shipped as package data
BUILD_VERSION = 1  # bump when the generated model changes, so old data folders get rebuilt
SHARD_BYTES = 1 << 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PARTS = ("passes", "rss", "heal")
DIFF_DIFFERENT = (1,)  # surgeon diff: 1 = the checkpoints differ, as they must here

# Part 1: what every surgeon run of the fixture uses (the CLI's defaults elsewhere).
PASSES_FRAC = 0.25
CALIB_MAX_TOKENS = 128
CALIB_BATCH = 16
LAYER_PHASES = ("capture", "propagate", "forward")  # surgeon's timings that are layer runs

# Part 2: the model's size is the yardstick for the prune's peak RSS.
RSS_LIMIT = 1 / 3

# Part 3: activations of one o_proj (16 heads x 128), generated chunk by chunk from seeds so
# that every child sees the same X without it ever being stored on disk.
HEAL_WIDTH = HEADS * HEAD_DIM
HEAL_CHUNK = 1024
HEAL_PRUNED = [3, 11]  # 2 of 16 heads, --prune-frac 0.125
HEAL_LATENT = 32  # shared directions that correlate the columns
HEAL_REL_LIMIT = 1e-4
HEAL_MODES = {
    "gram": "heal from G (float64 G, the engine)",
    "gram32": "heal from G accumulated in float32",
    "lstsq": "torch.linalg.lstsq on stored X (f64)",
}


# ------------------------------------------------------------------ part 1: layer passes


def naive_capture(fixture: Path) -> None:
    """A re-run-per-layer recipe without surgeon: the whole model loaded once with transformers,
    then for each layer i the model run on every calibration batch with a hook accumulating G
    of layer i's o_proj input. "full" runs the whole forward each time; "early" stops it after
    layer i (layers 0..i, the recipe's cheapest form). Prints what it counted, as JSON."""
    import torch
    from transformers import AutoModelForCausalLM

    batches = calibration_batches(fixture)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(fixture, dtype=torch.float32).eval()
    out: dict = {"load_s": time.perf_counter() - started, "batches": len(batches)}
    layers = model.model.layers
    calls = [0]
    for layer in layers:
        layer.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    out["layers"] = len(layers)
    for mode in ("full", "early"):
        calls[0], started = 0, time.perf_counter()
        tokens = [capture_layer(model, i, batches, stop_after=mode == "early") for i in range(len(layers))]
        out[mode] = {"calls": calls[0], "seconds": time.perf_counter() - started, "tokens": tokens}
    print(json.dumps(out))


def calibration_batches(fixture: Path):
    """The calibration batches exactly as `surgeon prune` makes them with its defaults."""
    from surgeon.runtime.corpus import encode, load_corpus
    from surgeon.runtime.stream import make_batches
    from surgeon.runtime.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(fixture)
    sequences = encode(tokenizer, load_corpus(None)[0], CALIB_MAX_TOKENS)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return make_batches(sequences, CALIB_BATCH, pad)


class _StopForward(Exception):
    """Raised by a hook once layer i has run: nothing after it is needed for layer i's G."""


def capture_layer(model, index: int, batches, stop_after: bool) -> int:
    """G of layer `index`'s o_proj input over real tokens; returns how many tokens it saw."""
    import torch

    layer = model.model.layers[index]
    o_proj = layer.self_attn.o_proj
    gram = torch.zeros(o_proj.in_features, o_proj.in_features, dtype=torch.float64)
    seen, mask = [0], [None]

    def accumulate(module, args) -> None:
        rows = args[0][mask[0]].to(torch.float64)
        gram.addmm_(rows.T, rows)
        seen[0] += rows.shape[0]

    def stop(module, args, output) -> None:
        raise _StopForward

    handles = [o_proj.register_forward_pre_hook(accumulate)]
    if stop_after:
        handles.append(layer.register_forward_hook(stop))
    with torch.no_grad():
        for batch in batches:
            mask[0] = batch.token_mask
            with contextlib.suppress(_StopForward):
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen[0]


@dataclass
class PassRow:
    name: str
    passes: float
    calls: int
    wall_s: float
    rss_mb: float
    run_s: float  # time spent running layers, see layer_run_seconds(); naive: its capture loop
    timings: dict = field(default_factory=dict)


def prune_fixture(importance: str, out: Path) -> tuple[Run, dict]:
    cmd = [surgeon_command(), "prune", str(FIXTURE), "-o", str(out), "--prune-frac", str(PASSES_FRAC)]
    cmd += ["--layers", "all", "--importance", importance, "--device", "cpu", "-q", "--json"]
    run = measure(cmd)
    log(f"  surgeon prune --importance {importance:<8} {run.wall_s:7.2f} s {run.rss_mb:7.0f} MB")
    return run, json.loads(run.stdout)


def run_passes(scratch: Path, repeat: int) -> dict:
    """Every run `repeat` times; the counts come from the first round (they do not vary)."""
    rounds = [passes_round(scratch / f"passes-{n}") for n in range(repeat)]
    rows = [best_row(same) for same in zip(*(r["rows"] for r in rounds), strict=True)]
    return rounds[0] | {"rows": rows, "repeat": repeat}


def best_row(rows: tuple[PassRow, ...]) -> PassRow:
    """The round with the least layer-run time (its timings shown), best wall, largest RSS:
    timings only ever get worse from noise (a busy core), memory does not vary much."""
    best = min(rows, key=lambda r: r.run_s)
    return replace(best, wall_s=min(r.wall_s for r in rows), rss_mb=max(r.rss_mb for r in rows))


def passes_round(scratch: Path) -> dict:
    scratch.mkdir()
    manifests, rows = {}, []
    for importance in ("recon", "norm", "loo-nll"):
        run, manifest = prune_fixture(importance, scratch / f"pruned-{importance}")
        manifests[importance] = manifest
        timings = manifest.get("timings", {})
        rows.append(
            PassRow(
                f"surgeon --importance {importance}",
                manifest["layer_passes"],
                manifest["forward_calls"],
                run.wall_s,
                run.rss_mb,
                layer_run_seconds(importance, timings),
                timings,
            )
        )
    run = measure([sys.executable, str(Path(__file__).resolve()), "--naive", str(FIXTURE)])
    naive = json.loads(run.stdout)
    log(f"  naive re-run-per-layer capture   {run.wall_s:7.2f} s {run.rss_mb:7.0f} MB")
    for mode, label in (("full", "whole forward"), ("early", "stop after layer i")):
        part = naive[mode]
        name = f"naive re-run per layer ({label})"
        passes = part["calls"] / naive["batches"]
        rows.append(PassRow(name, passes, part["calls"], run.wall_s, run.rss_mb, part["seconds"]))
    return {"rows": rows, "manifests": manifests, "naive": naive}


def layer_run_seconds(importance: str, timings: dict) -> float:
    """surgeon's phases that run layers: capture (base layer + G hook), propagate (pruned
    layer), forward (layers not pruned); loo-nll's importance phase is layer runs + NLL too."""
    phases = LAYER_PHASES + (("importance",) if importance == "loo-nll" else ())
    return sum(timings.get(phase, 0.0) for phase in phases)


def loo_expected_passes(manifest: dict, num_layers: int) -> int:
    """Passes of loo-nll if it starts from each layer's cached input: for a pruned layer i,
    capture 1, then the unmasked and each masked variant through layers i..N-1, propagate 1."""
    pruned = {layer["layer"]: layer["num_heads"] for layer in manifest["layers"]}
    return sum(2 + (pruned[i] + 1) * (num_layers - i) if i in pruned else 1 for i in range(num_layers))


def passes_checks(result: dict) -> list[str]:
    problems = []
    naive, layers = result["naive"], result["naive"]["layers"]
    for importance, manifest in result["manifests"].items():
        written = manifest["written"]["layers"]
        if written != list(range(layers)):
            problems.append(f"--importance {importance}: layers written are {written}, want all {layers}")
        if manifest["forward_calls"] != manifest["layer_passes"] * naive["batches"]:
            problems.append(f"--importance {importance}: forward_calls is not layer_passes x batches")
        if manifest["calibration"]["tokens"] != naive["early"]["tokens"][0]:
            problems.append(f"--importance {importance}: calibration tokens differ from the naive capture's")
    if naive["full"]["calls"] != layers * layers * naive["batches"]:
        problems.append("the naive whole-forward capture did not run layers^2 passes")
    if naive["early"]["calls"] != layers * (layers + 1) // 2 * naive["batches"]:
        problems.append("the naive early-stop capture did not run layers(layers+1)/2 passes")
    return problems


def passes_goals(result: dict) -> list[Goal]:
    layers = result["naive"]["layers"]
    by_name = {r.name: r for r in result["rows"]}
    goals = []
    for imp in ("recon", "norm"):
        passes = by_name[f"surgeon --importance {imp}"].passes
        goals.append(Goal(f"--importance {imp}: layer passes <= 2 x layers", passes, 2 * layers, ""))
    loo = result["manifests"]["loo-nll"]
    expected = loo_expected_passes(loo, layers)
    goals.append(Goal(f"loo-nll passes <= {expected} (never re-runs 0..i-1)", loo["layer_passes"], expected, ""))
    return goals


def render_passes(result: dict) -> list[str]:
    layers, rows = result["naive"]["layers"], result["rows"]
    triangle = layers * (layers + 1) // 2
    lines = [
        f"1. decoder-layer passes: {FIXTURE.name}, {layers} layers, {result['naive']['batches']} "
        f"calibration batches, --prune-frac {PASSES_FRAC}, all layers; a pass = one layer over "
        f"the whole calibration set; goal 2 x layers = {2 * layers}, re-run-per-layer "
        f"layers(layers+1)/2 = {triangle}; times: best of {result['repeat']}, RSS: largest",
        "",
        f"{'name':<42} {'passes':>7} {'calls':>6} {'x 2L':>6} {'x L(L+1)/2':>10} {'wall s':>7} "
        f"{'layer-run s':>11} {'peak RSS MB':>12}",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<42} {r.passes:7.0f} {r.calls:6d} {r.passes / (2 * layers):6.2f} "
            f"{r.passes / triangle:10.2f} {r.wall_s:7.2f} {r.run_s:11.2f} {r.rss_mb:12.0f}"
        )
    lines.append("")
    for r in rows:
        if r.timings:
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r.timings.items())
            lines.append(f"  {r.name} timings (s): {phases}")
    recon, naive = rows[0], rows[-1]
    lines.append(
        f"  naive (stop after layer i) / recon: {naive.passes / recon.passes:.2f}x the passes, "
        f"{naive.run_s / recon.run_s:.2f}x the layer-run time (surgeon: {'+'.join(LAYER_PHASES)} phases)"
    )
    return lines


# --------------------------------------------------------------- part 2: RSS, big model


@dataclass(frozen=True)
class BigPlan:
    size_gb: float
    num_layers: int
    shard_names: list[str]
    tensors: list[tuple[str, tuple[int, ...], int]]  # (name, shape, shard index)

    @property
    def total_bytes(self) -> int:
        return sum(math.prod(shape) * 2 for _, shape, _ in self.tensors)

    def describe(self) -> dict:
        return {
            "version": BUILD_VERSION,
            "size_gb": self.size_gb,
            "num_layers": self.num_layers,
            "shards": self.shard_names,
            "bytes": self.total_bytes,
        }


def make_big_plan(size_gb: float) -> BigPlan:
    fixed = sum(math.prod(s) * 2 for _, s in tensor_shapes(0))
    per_layer = sum(math.prod(s) * 2 for _, s in tensor_shapes(1)) - fixed
    num_layers = max(1, math.ceil((size_gb * (1 << 30) - fixed) / per_layer))
    shapes = tensor_shapes(num_layers)
    total = fixed + num_layers * per_layer
    count = max(1, round(total / SHARD_BYTES))
    tensors, offset = [], 0
    for name, shape in shapes:  # a tensor goes to the shard its first byte falls in
        tensors.append((name, shape, min(count - 1, offset * count // total)))
        offset += math.prod(shape) * 2
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    return BigPlan(size_gb, num_layers, names, tensors)


def big_config(num_layers: int) -> dict:
    """bench_diff's llama config, with the special token ids of the tokenizer copied in."""
    fixture = json.loads((FIXTURE / "config.json").read_text())
    ids = {k: fixture[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return llama_config(num_layers) | ids


def norm_bits(pool: np.ndarray, index: int, numel: int) -> np.ndarray:
    """RMSNorm weights near 1.0 (1 + N(0, 0.02)): zero-centred ones would kill the stream."""
    from surgeon.format.dtypes import float32_to_bf16_bits

    noise = (tensor_bits(pool, index, numel).astype(np.uint32) << 16).view(np.float32)
    return float32_to_bf16_bits(1.0 + noise)


def write_big_shard(plan: BigPlan, shard: int, pool: np.ndarray, folder: Path) -> None:
    from surgeon.format.safetensors import TensorBytes, write_safetensors

    tensors = []
    for index, (name, shape, where) in enumerate(plan.tensors):
        if where == shard:
            make = norm_bits if len(shape) == 1 else tensor_bits
            bits = make(pool, index, math.prod(shape))
            tensors.append(TensorBytes(name, "BF16", shape, memoryview(bits)))
    write_safetensors(folder / plan.shard_names[shard], tensors, {"format": "pt"})


def write_big_side_files(plan: BigPlan, folder: Path) -> None:
    weight_map = {name: plan.shard_names[shard] for name, _, shard in plan.tensors}
    index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(big_config(plan.num_layers), indent=2) + "\n")
    for name in TOKENIZER_FILES:  # its ids are < 512, inside the 32000-row embedding
        shutil.copyfile(FIXTURE / name, folder / name)


def ensure_big_model(data_dir: Path, plan: BigPlan) -> Path:
    """Build the model unless a marker says this exact plan was built completely before."""
    folder, marker = data_dir / "model", data_dir / "built.json"
    try:
        if json.loads(marker.read_text()) == plan.describe():
            log(f"reusing the {plan.total_bytes / 1e9:.2f} GB model in {folder}")
            return folder
    except (OSError, ValueError):
        pass
    started = time.perf_counter()
    marker.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = value_pool()
    for shard in range(len(plan.shard_names)):
        write_big_shard(plan, shard, pool, folder)
    write_big_side_files(plan, folder)
    marker.write_text(json.dumps(plan.describe(), indent=2) + "\n")
    seconds = time.perf_counter() - started
    log(f"built the {plan.total_bytes / 1e9:.2f} GB model in {folder} in {seconds:.1f} s")
    return folder


def loadable_problems(folder: Path, plan: BigPlan) -> list[str]:
    """What would stop AutoModelForCausalLM.from_pretrained: the config must parse, and the
    model it describes (built on the meta device, no memory) must have exactly our tensors."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    built = {name: shape for name, shape, _ in plan.tensors}
    if expected == built:
        return []
    odd = sorted(set(expected.items()) ^ set(built.items()))
    return [f"the built model does not match {type(model).__name__}: first mismatch {odd[0]}"]


def big_prune_args(importance: str) -> list[str]:
    """Every layer pruned on the CPU; calibration kept small: the point is memory, not quality."""
    flags = f"--prune-frac 0.125 --layers all --importance {importance} --device cpu -q"
    return f"{flags} --calib-samples 16 --sample-tokens 64".split()


def run_rss(data_dir: Path, size_gb: float, importance: str) -> dict:
    plan = make_big_plan(size_gb)
    folder = ensure_big_model(data_dir, plan)
    problems = loadable_problems(folder, plan)
    warm_page_cache([folder / n for n in plan.shard_names])
    surgeon = surgeon_command()
    with tempfile.TemporaryDirectory(prefix="surgeon-bench-prune-", dir=data_dir) as scratch:
        out = Path(scratch) / "pruned"
        args = big_prune_args(importance)
        prune_run = measure([surgeon, "prune", str(folder), "-o", str(out), *args])
        log(f"  surgeon prune ({plan.num_layers} layers) {prune_run.wall_s:7.2f} s {prune_run.rss_mb:7.0f} MB")
        manifest = json.loads((out / "prune_manifest.json").read_text())
        diff = [surgeon, "diff", str(folder), str(out), "--json", "--no-stats", "--cache-dir", scratch + "/c"]
        diff_run = measure(diff, DIFF_DIFFERENT)
        log(f"  surgeon diff                     {diff_run.wall_s:7.2f} s {diff_run.rss_mb:7.0f} MB")
    changed = json.loads(diff_run.stdout)["summary"]["layers_changed"]
    if changed != list(range(plan.num_layers)):
        problems.append(f"surgeon diff: layers_changed is {changed}, want all {plan.num_layers} layers")
    result = {"plan": plan, "args": args, "prune": prune_run, "diff": diff_run, "manifest": manifest}
    return result | {"problems": problems}


def rss_goals(result: dict) -> list[Goal]:
    ratio = result["prune"].rss_mb * (1 << 20) / result["plan"].total_bytes
    return [Goal("peak RSS / model size <= 1/3", ratio, round(RSS_LIMIT, 3), "")]


def render_rss(result: dict) -> list[str]:
    plan, manifest = result["plan"], result["manifest"]
    size_mb = plan.total_bytes / (1 << 20)
    lines = [
        f"2. peak RSS: llama-like bf16 model, {plan.total_bytes / 1e9:.2f} GB ({size_mb:.0f} MiB), "
        f"{plan.num_layers} layers, {len(plan.shard_names)} shards; "
        f"surgeon prune {' '.join(result['args'])}",
        "",
        f"{'name':<42} {'wall s':>8} {'peak RSS MB':>12} {'x model size':>13}",
    ]
    for name, run in (
        ("surgeon prune (all layers)", result["prune"]),
        ("surgeon diff --no-stats", result["diff"]),
    ):
        lines.append(f"{name:<42} {run.wall_s:8.2f} {run.rss_mb:12.0f} {run.rss_mb / size_mb:13.3f}")
    phases = ", ".join(f"{k} {v:.1f}" for k, v in manifest.get("timings", {}).items())
    lines += [
        "",
        f"  prune timings (s): {phases}",
        f"  layer passes {manifest.get('layer_passes')} for {plan.num_layers} layers; "
        f"{manifest['calibration']['tokens']} calibration tokens",
    ]
    return lines


# ------------------------------------------------------------- part 3: heal, G vs lstsq


def heal_setup(width: int):
    """o_proj's weight and what makes the activations: per-column scales over 1.5 decades and
    HEAL_LATENT shared directions, so G is far from diagonal (cond(G_KK) ~1e5)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(width, width, generator=gen) * 0.02
    scale = torch.logspace(-1.5, 0, width)[torch.randperm(width, generator=gen)]
    mixing = torch.randn(HEAL_LATENT, width, generator=gen) * 0.2
    return weight, scale, mixing


def activation_chunk(k: int, scale, mixing):
    """Rows [k*HEAL_CHUNK, (k+1)*HEAL_CHUNK) of X in float32, as the engine's CPU stream is."""
    import torch

    gen = torch.Generator().manual_seed(1000 + k)
    z = torch.randn(HEAL_CHUNK, scale.numel(), generator=gen)
    return z * scale + torch.randn(HEAL_CHUNK, HEAL_LATENT, generator=gen) @ mixing


def heal_child(mode: str, out_file: Path, tokens: int) -> None:
    """One heal in this process; saves the healed weight (float64) and prints JSON. The timer
    covers only the method (G accumulation + heal, or X W^T + lstsq), not making X."""
    import torch

    torch.manual_seed(0)
    weight, scale, mixing = heal_setup(HEAL_WIDTH)
    setup_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    healed, seconds, extra = (heal_lstsq if mode == "lstsq" else heal_gram)(mode, weight, scale, mixing, tokens)
    np.save(out_file, healed.numpy())
    print(json.dumps({"seconds": seconds, "setup_rss_mb": setup_kib / 1024, **extra}))


def heal_gram(mode: str, weight, scale, mixing, tokens: int):
    """The engine's way: a hook adds each chunk's X^T X to G; X itself is never kept."""
    import torch

    from surgeon.prune.heal import heal_o_proj

    dtype = torch.float32 if mode == "gram32" else torch.float64
    gram, seconds = torch.zeros(HEAL_WIDTH, HEAL_WIDTH, dtype=dtype), 0.0
    for k in range(tokens // HEAL_CHUNK):
        chunk = activation_chunk(k, scale, mixing)
        started = time.perf_counter()
        rows = chunk.to(dtype)
        gram.addmm_(rows.T, rows)
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    healed, stats = heal_o_proj(weight, gram, HEAL_PRUNED, HEAD_DIM, 0.0, tokens)
    seconds += time.perf_counter() - started
    return (
        healed,
        seconds,
        {"condition": stats.condition, "rel_residual": stats.rel_residual, "solver": stats.solver},
    )


def heal_lstsq(mode: str, weight, scale, mixing, tokens: int):
    """The textbook way: keep X (float64, so the answer is a reference, not fp32 rounding),
    solve min ||X W^T - X_K B|| with LAPACK's gelsy (torch's CPU default)."""
    import torch

    from surgeon.prune.heal import head_columns

    x = torch.empty(tokens, HEAL_WIDTH, dtype=torch.float64)
    for k in range(tokens // HEAL_CHUNK):
        x[k * HEAL_CHUNK : (k + 1) * HEAL_CHUNK] = activation_chunk(k, scale, mixing)
    started = time.perf_counter()
    kept = head_columns([h for h in range(HEADS) if h not in HEAL_PRUNED], HEAD_DIM)
    target = x @ weight.to(torch.float64).T
    solution = torch.linalg.lstsq(x[:, kept], target).solution
    healed = torch.zeros(weight.shape, dtype=torch.float64)
    healed[:, kept] = solution.T
    return healed, time.perf_counter() - started, {}


def run_heal(tokens: int, scratch: Path, repeat: int) -> dict:
    """Each method `repeat` times: the least time, the largest peak RSS."""
    rows = {}
    for mode in HEAL_MODES:
        runs = [heal_run(mode, tokens, scratch / f"healed-{mode}-{n}.npy") for n in range(repeat)]
        rows[mode] = min(runs, key=lambda r: r["seconds"]) | {"rss_mb": max(r["rss_mb"] for r in runs)}
    reference = rows["lstsq"]["weight"]
    for row in rows.values():
        row["max_rel_diff"] = float(np.abs(row.pop("weight") - reference).max() / np.abs(reference).max())
    return {"tokens": tokens, "rows": rows, "repeat": repeat}


def heal_run(mode: str, tokens: int, out: Path) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    run = measure([*me, "--heal-child", mode, str(out), "--heal-tokens", str(tokens)])
    info = json.loads(run.stdout)
    log(f"  {HEAL_MODES[mode]:<40} {run.wall_s:7.2f} s {run.rss_mb:7.0f} MB")
    return {**info, "rss_mb": run.rss_mb, "weight": np.load(out)}


def heal_goals(result: dict) -> list[Goal]:
    gram = result["rows"]["gram"]
    return [Goal("heal from G: max |dW| / max |W_lstsq| <= 1e-4", gram["max_rel_diff"], HEAL_REL_LIMIT, "")]


def render_heal(result: dict) -> list[str]:
    rows = result["rows"]
    lines = [
        f"3. o_proj heal: {result['tokens']} tokens x {HEAL_WIDTH} inputs ({HEADS} heads x {HEAD_DIM}) -> "
        f"{HEAL_WIDTH} outputs, heads {HEAL_PRUNED} pruned, ridge 0; time = the method only; "
        f"RSS above setup = peak - peak before the method; best time of {result['repeat']}, largest RSS",
        "",
        f"{'name':<42} {'time s':>7} {'peak RSS MB':>12} {'above setup':>12} {'max rel diff':>13}",
    ]
    for mode, row in rows.items():
        above = row["rss_mb"] - row["setup_rss_mb"]
        lines.append(
            f"{HEAL_MODES[mode]:<42} {row['seconds']:7.2f} {row['rss_mb']:12.0f} {above:12.0f} "
            f"{row['max_rel_diff']:13.2e}"
        )
    gram, lstsq = rows["gram"], rows["lstsq"]
    lines += [
        "",
        f"  G / lstsq: {gram['seconds'] / lstsq['seconds']:.2f}x the time, "
        f"{gram['rss_mb'] / lstsq['rss_mb']:.2f}x the peak RSS, "
        f"{(gram['rss_mb'] - gram['setup_rss_mb']) / (lstsq['rss_mb'] - lstsq['setup_rss_mb']):.2f}x "
        f"the memory above setup; G's condition estimate {gram['condition']:.3g} ({gram['solver']}), "
        f"relative residual {gram['rel_residual']:.3g}",
    ]
    return lines


# ----------------------------------------------------------------------------- main


def render_goals(goals: list[Goal]) -> list[str]:
    lines = ["goals:"]
    for g in goals:
        verdict = "PASS" if g.passed else "FAIL"
        lines.append(f"  {verdict}  {g.text:<52} {g.value:10.4g}{g.unit} (limit {g.limit:.4g}{g.unit})")
    return lines


def to_json(results: dict, goals: list[Goal], problems: list[str]) -> dict:
    out: dict = {"cpu_count": os.cpu_count(), "rss_method": rss_method()}
    if "passes" in results:
        r = results["passes"]
        out["passes"] = {"rows": [asdict(row) for row in r["rows"]], "naive": r["naive"]}
    if "rss" in results:
        r = results["rss"]
        out["rss"] = {
            "model": r["plan"].describe(),
            "prune": {"wall_s": r["prune"].wall_s, "peak_rss_mb": r["prune"].rss_mb},
            "diff": {"wall_s": r["diff"].wall_s, "peak_rss_mb": r["diff"].rss_mb},
            "timings": r["manifest"].get("timings"),
            "layer_passes": r["manifest"].get("layer_passes"),
        }
    if "heal" in results:
        out["heal"] = results["heal"]
    out["goals"] = [asdict(g) | {"passed": g.passed} for g in goals]
    out["correctness_problems"] = problems
    return out


def benchmark(args: argparse.Namespace) -> int:
    results, goals, problems, lines = {}, [], [], []
    with tempfile.TemporaryDirectory(prefix="surgeon-bench-") as tmp:
        scratch = Path(tmp)
        if "passes" in args.parts:
            log("1. layer passes")
            results["passes"] = run_passes(scratch, args.repeat)
            goals += passes_goals(results["passes"])
            problems += passes_checks(results["passes"])
            lines += [*render_passes(results["passes"]), ""]
        if "rss" in args.parts:
            log("2. peak RSS on the big model")
            args.data_dir.mkdir(parents=True, exist_ok=True)
            results["rss"] = run_rss(args.data_dir.resolve(), args.size_gb, args.rss_importance)
            goals += rss_goals(results["rss"])
            problems += results["rss"]["problems"]
            lines += [*render_rss(results["rss"]), ""]
        if "heal" in args.parts:
            log("3. heal from G vs lstsq")
            results["heal"] = run_heal(args.heal_tokens, scratch, args.repeat)
            goals += heal_goals(results["heal"])
            lines += [*render_heal(results["heal"]), ""]
    print(f"{os.cpu_count()} cores; peak RSS from {rss_method()}; every run is its own child process\n")
    print("\n".join(lines + render_goals(goals)))
    for problem in problems:
        print(f"WRONG: {problem}")
    print("correctness: " + ("FAIL" if problems else "PASS"))
    if args.json_out:
        args.json_out.write_text(json.dumps(to_json(results, goals, problems), indent=2) + "\n")
    return 1 if problems else 0


def parse_parts(value: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"use a comma-separated subset of {','.join(PARTS)}")
    return parts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=HERE / "_data" / "prune", help="where the model goes")
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the big model in GiB")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help="passes,rss,heal (default all)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of parts 1 and 3; the best counts")
    parser.add_argument("--rss-importance", choices=("recon", "norm"), default="recon", help="importance in part 2")
    parser.add_argument("--heal-tokens", type=int, default=8192, help="activation rows in part 3")
    parser.add_argument("--json-out", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--naive", type=Path, metavar="FIXTURE", help=argparse.SUPPRESS)
    parser.add_argument("--heal-child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.naive:
        naive_capture(args.naive)
        return 0
    if args.heal_child:
        mode, out = args.heal_child
        heal_child(mode, Path(out), args.heal_tokens)
        return 0
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if args.heal_tokens < HEAL_CHUNK or args.heal_tokens % HEAL_CHUNK:
        raise SystemExit(f"--heal-tokens must be a positive multiple of {HEAL_CHUNK}")
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
