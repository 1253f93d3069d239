"""Benchmark `surgeon diff` against sha256sum, a naive torch diff and a hashing floor.

Run: python benchmarks/bench_diff.py [--size-gb 1.0] [--repeat 3] [--json-out FILE]

It builds (once, then reuses) a synthetic llama-like bf16 checkpoint pair under --data-dir:
several ~256 MB shards per side, q_proj/o_proj of layers 0-3 changed (one head zeroed in
each, the other o_proj values perturbed) and the last shard differing only in its header
metadata. With every file in the page cache, it times each approach in its own child process
(best wall time of --repeat runs, peak RSS from GNU time), checks that surgeon reports what was
built, and prints a table and the issue's goals as PASS/FAIL. Goals failing is a result, not
an error: the exit status is 0 unless something crashed or a report was wrong.

Sub-modes used as children: --naive BASE OTHER and --floor FILE...
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUILD_VERSION = 1  # bump when the generated data changes, so old data folders get rebuilt

# Llama-like geometry (a 1B-class model with a smaller vocabulary).
HIDDEN = 2048
HEADS = 16
HEAD_DIM = 128
KV_HEADS = 4
INTERMEDIATE = 5632
VOCAB = 32000
SHARD_BYTES = 256 << 20
CHANGED_LAYERS = (0, 1, 2, 3)
MIN_LAYERS = 6  # below this the last shard would hold a changed tensor and not be header-only
POOL_ELEMENTS = 1 << 24  # random bf16 values shared by all tensors (32 MB), see tensor_bits()

HEADER_ONLY_METADATA = {"surgeon_bench": json.dumps({"recipe": "header-only", "note": "extra metadata"})}
READ_CHUNK = 4 << 20
DIFF_OK = (0, 1)  # surgeon diff: 0 identical, 1 different (expected here), 2 trouble


# ---------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Plan:
    """What gets built: tensor names and shapes, their shards, and what differs."""

    size_gb: float
    num_layers: int
    shard_names: list[str]
    tensors: list[tuple[str, tuple[int, ...], int]]  # (name, shape, shard index)
    changed: list[str]
    zeroed_head: dict[int, int]  # layer -> the head zeroed in that layer
    header_only_shard: str

    def describe(self) -> dict:
        total = sum(math.prod(shape) * 2 for _, shape, _ in self.tensors)
        return {
            "version": BUILD_VERSION,
            "size_gb": self.size_gb,
            "num_layers": self.num_layers,
            "shards": self.shard_names,
            "bytes_per_side": total,
            "changed": self.changed,
            "header_only_shard": self.header_only_shard,
        }


def tensor_shapes(num_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    q_rows, kv_rows = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for layer in range(num_layers):
        prefix = f"model.layers.{layer}."
        shapes += [
            (prefix + "input_layernorm.weight", (HIDDEN,)),
            (prefix + "self_attn.q_proj.weight", (q_rows, HIDDEN)),
            (prefix + "self_attn.k_proj.weight", (kv_rows, HIDDEN)),
            (prefix + "self_attn.v_proj.weight", (kv_rows, HIDDEN)),
            (prefix + "self_attn.o_proj.weight", (HIDDEN, q_rows)),
            (prefix + "post_attention_layernorm.weight", (HIDDEN,)),
            (prefix + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (prefix + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (prefix + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return [*shapes, ("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def make_plan(size_gb: float) -> Plan:
    fixed = sum(math.prod(s) * 2 for _, s in tensor_shapes(0))
    per_layer = sum(math.prod(s) * 2 for _, s in tensor_shapes(1)) - fixed
    num_layers = max(MIN_LAYERS, math.ceil((size_gb * (1 << 30) - fixed) / per_layer))
    shapes = tensor_shapes(num_layers)
    total = fixed + num_layers * per_layer
    count = max(2, round(total / SHARD_BYTES))
    # A tensor goes to the shard its first byte falls in: exactly `count` shards of about
    # total/count bytes each, like HF's max_shard_size but without a stray small last shard.
    tensors, offset = [], 0
    for name, shape in shapes:
        tensors.append((name, shape, min(count - 1, offset * count // total)))
        offset += math.prod(shape) * 2
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    changed = [
        f"model.layers.{layer}.self_attn.{proj}.weight" for layer in CHANGED_LAYERS for proj in ("q_proj", "o_proj")
    ]
    last = count - 1
    if any(shard == last for name, _, shard in tensors if name in changed):
        raise SystemExit(f"--size-gb {size_gb} is too small: the last shard would hold a changed tensor")
    zeroed = {layer: (layer * 3 + 1) % HEADS for layer in CHANGED_LAYERS}
    return Plan(size_gb, num_layers, names, tensors, changed, zeroed, names[last])


def llama_config(num_layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_hidden_layers": num_layers,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def value_pool() -> np.ndarray:
    """bf16 bits of N(0, 0.02) samples: realistic, finite weights, generated once."""
    from surgeon.format.dtypes import float32_to_bf16_bits

    rng = np.random.Generator(np.random.PCG64(0))
    return float32_to_bf16_bits(rng.standard_normal(POOL_ELEMENTS, dtype=np.float32) * 0.02)


def tensor_bits(pool: np.ndarray, index: int, numel: int) -> np.ndarray:
    """A tensor's bf16 bits: the pool read from a per-tensor offset (wrapping around), with
    low mantissa bits flipped per tensor so no two tensors share content. Copying is ~100x
    faster than drawing fresh random numbers for a GB, and the values stay finite."""
    out = np.empty(numel, dtype=np.uint16)
    start, filled = (index * 2_654_435_761) % POOL_ELEMENTS, 0
    while filled < numel:
        take = min(numel - filled, POOL_ELEMENTS - start)
        out[filled : filled + take] = pool[start : start + take]
        filled, start = filled + take, 0
    out ^= np.uint16(1 + index % 7)
    return out


def pruned(name: str, bits: np.ndarray, shape: tuple[int, ...], layer: int, head: int) -> np.ndarray:
    """The OTHER side of a changed tensor: a mask-mode head prune, o_proj also 'healed'."""
    from surgeon.format.dtypes import float32_to_bf16_bits

    head_span = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    if name.endswith("q_proj.weight"):
        out = bits.reshape(shape).copy()
        out[head_span, :] = 0
        return out.reshape(-1)
    values = (bits.astype(np.uint32) << 16).view(np.float32)
    rng = np.random.Generator(np.random.PCG64([1, layer]))
    values = values * (1.0 + 0.05 * rng.standard_normal(values.shape, dtype=np.float32))
    out = float32_to_bf16_bits(values).reshape(shape)
    out[:, head_span] = 0
    return out.reshape(-1)


def write_shard_pair(plan: Plan, shard: int, pool: np.ndarray, base: Path, other: Path) -> None:
    from surgeon.format.safetensors import TensorBytes, write_safetensors

    base_tensors, other_tensors = [], []
    for index, (name, shape, where) in enumerate(plan.tensors):
        if where != shard:
            continue
        bits = tensor_bits(pool, index, math.prod(shape))
        base_tensors.append(TensorBytes(name, "BF16", shape, memoryview(bits)))
        if name in plan.changed:
            layer = int(name.split(".")[2])
            bits = pruned(name, bits, shape, layer, plan.zeroed_head[layer])
        other_tensors.append(TensorBytes(name, "BF16", shape, memoryview(bits)))
    file_name = plan.shard_names[shard]
    other_meta = {"format": "pt"}
    if file_name == plan.header_only_shard:
        other_meta |= HEADER_ONLY_METADATA
    write_safetensors(base / file_name, base_tensors, {"format": "pt"})
    write_safetensors(other / file_name, other_tensors, other_meta)


def write_side_files(plan: Plan, folder: Path) -> None:
    weight_map = {name: plan.shard_names[shard] for name, _, shard in plan.tensors}
    index = {
        "metadata": {"total_size": plan.describe()["bytes_per_side"]},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(llama_config(plan.num_layers), indent=2) + "\n")


def ensure_data(data_dir: Path, plan: Plan) -> tuple[Path, Path]:
    """Build the pair unless a marker says this exact plan was built completely before."""
    base, other, marker = data_dir / "base", data_dir / "other", data_dir / "built.json"
    try:
        if json.loads(marker.read_text()) == plan.describe():
            log(f"reusing the checkpoint pair in {data_dir}")
            return base, other
    except (OSError, ValueError):
        pass
    started = time.perf_counter()
    marker.unlink(missing_ok=True)
    for folder in (base, other):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    pool = value_pool()
    for shard in range(len(plan.shard_names)):
        write_shard_pair(plan, shard, pool, base, other)
    for folder in (base, other):
        write_side_files(plan, folder)
    marker.write_text(json.dumps(plan.describe(), indent=2) + "\n")
    log(f"built the checkpoint pair in {data_dir} in {time.perf_counter() - started:.1f} s")
    return base, other


def shard_files(folder: Path, plan: Plan) -> list[Path]:
    return [folder / name for name in plan.shard_names]


# ---------------------------------------------------------------------- child sub-modes


def naive_diff(base: Path, other: Path) -> None:
    """What a script without surgeon would do: load both state dicts, torch.equal, hash."""
    import torch
    from safetensors.torch import load_file

    def load_side(folder: Path) -> dict[str, torch.Tensor]:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(folder / shard))
        return state

    a, b = load_side(base), load_side(other)
    changed, hashes = [], {}
    for name in sorted(a.keys() | b.keys()):
        ta, tb = a.get(name), b.get(name)
        same = ta is not None and tb is not None and ta.shape == tb.shape and ta.dtype == tb.dtype
        if not (same and torch.equal(ta, tb)):
            changed.append(name)
        hashes[name] = [None if t is None else _tensor_sha256(t) for t in (ta, tb)]
    print(json.dumps({"changed": changed, "tensors": len(hashes)}))


def _tensor_sha256(tensor) -> str:
    import torch

    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy()).hexdigest()


def floor_hash(files: list[Path]) -> None:
    """SHA256 of whole files on every core: hashlib releases the GIL while it hashes."""

    def one(path: Path) -> str:
        digest, buffer = hashlib.sha256(), bytearray(READ_CHUNK)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                digest.update(view[:n])
        return digest.hexdigest()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for path, digest in zip(files, pool.map(one, files), strict=True):
            print(f"{digest}  {path}")


# ------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall_s: float
    rss_mb: float
    stdout: str


@dataclass
class Result:
    key: str
    name: str
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def peak_rss(self) -> float:
        return max(self.rss_mb)


# Reports a command's peak RSS (KiB) into argv[1]; used where GNU time is missing. A fork
# from this small interpreter starts the command's high-water mark at ~9 MB, not at ours.
RSS_HELPER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], ok: tuple[int, ...] = (0,), env_extra: dict | None = None) -> Run:
    """Run `cmd` in a fresh child: wall time around it, peak RSS from a small wrapper.

    Not our own wait4: Linux starts a child's peak RSS at its parent's high-water mark (fork
    copies it, exec keeps it), and ours is hundreds of MB after building the data. Output
    goes to files, not pipes, so a large report cannot block the child.
    """
    env = os.environ | {"HF_HUB_OFFLINE": "1"} | (env_extra or {})
    with tempfile.TemporaryDirectory(prefix="surgeon-run-") as tmp:
        rss_file, out_file, err_file = (Path(tmp) / n for n in ("rss", "out", "err"))
        with open(out_file, "wb") as out, open(err_file, "wb") as err:
            started = time.perf_counter()
            code = subprocess.call([*rss_wrapper(rss_file), *cmd], stdout=out, stderr=err, env=env)
            wall = time.perf_counter() - started
        if code not in ok:
            raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{err_file.read_text()[-2000:]}")
        # GNU time puts "Command exited with non-zero status N" before the figure.
        rss_kib = int(rss_file.read_text().split()[-1])
        return Run(wall, rss_kib / 1024, out_file.read_text())


@functools.cache
def rss_wrapper_prefix() -> tuple[str, ...]:
    """GNU time where it works (a ~2 MB process), else the Python helper above."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "rss"
        gnu_time = ("/usr/bin/time", "-f", "%M", "-o")
        try:
            subprocess.run([*gnu_time, str(probe), "true"], check=True, capture_output=True)
            int(probe.read_text().split()[-1])
            return gnu_time
        except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
            return (sys.executable, "-S", "-c", RSS_HELPER)


def rss_wrapper(rss_file: Path) -> list[str]:
    return [*rss_wrapper_prefix(), str(rss_file)]


def rss_method() -> str:
    return "GNU time" if rss_wrapper_prefix()[0] == "/usr/bin/time" else "a fork helper (>= ~9 MB)"


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once so all approaches see the same warm page cache."""
    buffer = bytearray(READ_CHUNK)
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def surgeon_command() -> str:
    beside = Path(sys.executable).with_name("surgeon")  # the venv's console script
    found = str(beside) if beside.exists() else shutil.which("surgeon")
    if not found:
        raise SystemExit("cannot find the `surgeon` command: activate the project's virtualenv")
    return found


CASES = {
    "cold": "surgeon diff (cold cache)",
    "warm": "surgeon diff (warm cache)",
    "nohash": "surgeon diff --no-hash",
    "sha256sum": "sha256sum (both sides)",
    "naive": "naive torch load+equal+hash",
    "floor": f"floor: hashlib x{os.cpu_count()} threads",
}
SURGEON_CASES = ("cold", "warm", "nohash")


def one_round(base: Path, other: Path, files: list[Path], scratch: Path, number: int) -> dict[str, Run]:
    """Each approach once. The cold run gets a fresh, empty cache; the warm one reuses it."""
    surgeon = surgeon_command()
    diff = [surgeon, "diff", str(base), str(other), "--json", "--no-progress"]
    cache = scratch / f"cache-{number}"
    me = [sys.executable, str(Path(__file__).resolve())]
    commands = {
        "cold": ([*diff, "--cache-dir", str(cache)], DIFF_OK),
        "warm": ([*diff, "--cache-dir", str(cache)], DIFF_OK),
        "nohash": ([*diff, "--no-hash", "--no-cache"], DIFF_OK),
        "sha256sum": (["sha256sum", *map(str, files)], (0,)),
        "naive": ([*me, "--naive", str(base), str(other)], (0,)),
        "floor": ([*me, "--floor", *map(str, files)], (0,)),
    }
    runs = {}
    for key, (cmd, ok) in commands.items():
        runs[key] = measure(cmd, ok)
        log(f"  round {number}: {CASES[key]:<32} {runs[key].wall_s:7.2f} s {runs[key].rss_mb:7.0f} MB")
    shutil.rmtree(cache, ignore_errors=True)
    return runs


# ------------------------------------------------------------------------ correctness


def check_reports(plan: Plan, runs: dict[str, Run]) -> list[str]:
    """What surgeon (and the naive script) reported that does not match what was built."""
    cold = json.loads(runs["cold"].stdout)
    problems = check_diff_report(plan, cold)
    if _without_hash_sources(json.loads(runs["warm"].stdout)) != _without_hash_sources(cold):
        problems.append("the warm-cache report differs from the cold one")
    statuses = {t["name"]: t["status"] for t in cold["tensors"]}
    nohash = {t["name"]: t["status"] for t in json.loads(runs["nohash"].stdout)["tensors"]}
    if nohash != statuses:
        problems.append("--no-hash tensor statuses differ from the hashed run's")
    if sorted(json.loads(runs["naive"].stdout)["changed"]) != sorted(plan.changed):
        problems.append("the naive script found other changed tensors than were built")
    problems += check_file_hashes(cold, runs)
    return problems


def _without_hash_sources(report: dict) -> dict:
    """The report less where each shard hash came from: the warm run says "cache" where the
    cold one says "bytes", and every hash must still be the same."""
    for shard in report["shards"]:
        shard.pop("sha256_source", None)
    return report


def check_diff_report(plan: Plan, report: dict) -> list[str]:
    problems = []
    summary = report["summary"]
    if summary["layers_changed"] != list(CHANGED_LAYERS):
        problems.append(f"layers_changed is {summary['layers_changed']}, built {list(CHANGED_LAYERS)}")
    changed = sorted(t["name"] for t in report["tensors"] if t["status"] != "identical")
    if changed != sorted(plan.changed) or summary["tensors"]["changed"] != len(plan.changed):
        problems.append(f"differing tensors are {changed}, built {sorted(plan.changed)}")
    problems += check_heads(plan, report)
    expected_shards = expected_shard_statuses(plan)
    got_shards = {s["name"]: s["status"] for s in report["shards"]}
    if got_shards != expected_shards:
        problems.append(f"shard statuses are {got_shards}, expected {expected_shards}")
    return problems


def check_heads(plan: Plan, report: dict) -> list[str]:
    problems = []
    for t in report["tensors"]:
        if t["name"] not in plan.changed:
            continue
        head = plan.zeroed_head[t["layer"]]
        others = [h for h in range(HEADS) if h != head]
        heads = t["heads"] or {}
        # q_proj: only the pruned head's rows changed; o_proj: every other head was perturbed.
        want_changed = others if t["family"].endswith("o_proj.weight") else []
        if heads.get("zeroed") != [head] or heads.get("changed") != want_changed:
            problems.append(
                f"{t['name']}: heads zeroed {heads.get('zeroed')}, changed {heads.get('changed')}; "
                f"built zeroed [{head}], changed {want_changed}"
            )
    return problems


def expected_shard_statuses(plan: Plan) -> dict[str, str]:
    with_changes = {plan.shard_names[shard] for name, _, shard in plan.tensors if name in plan.changed}
    statuses = {}
    for name in plan.shard_names:
        statuses[name] = "changed" if name in with_changes else "identical"
    statuses[plan.header_only_shard] = "header-only"
    return statuses


def check_file_hashes(report: dict, runs: dict[str, Run]) -> list[str]:
    """surgeon's whole-file SHA256s must be what sha256sum and the floor computed."""
    by_path = {}
    for line in runs["sha256sum"].stdout.splitlines():
        digest, path = line.split(maxsplit=1)
        by_path[Path(path)] = digest
    floor = {Path(p): d for d, p in (line.split(maxsplit=1) for line in runs["floor"].stdout.splitlines())}
    problems = [] if floor == by_path else ["the floor's SHA256s differ from sha256sum's"]
    roots = (Path(report["base"]["path"]), Path(report["other"]["path"]))
    for shard in report["shards"]:
        for side, root in enumerate(roots):
            if shard["sha256"][side] != by_path.get(root / shard["name"]):
                problems.append(f"{shard['name']}: surgeon's file SHA256 differs from sha256sum's")
    return problems


# --------------------------------------------------------------------------- report


@dataclass
class Goal:
    text: str
    value: float
    limit: float
    unit: str

    @property
    def passed(self) -> bool:
        return self.value <= self.limit


def goals(results: dict[str, Result]) -> list[Goal]:
    sha, floor = results["sha256sum"].best, results["floor"].best
    cold, warm, nohash = (results[k].best for k in ("cold", "warm", "nohash"))
    rss = max(results[k].peak_rss for k in SURGEON_CASES)
    return [
        Goal("cold diff <= 0.3x sha256sum", cold / sha, 0.3, "x"),
        Goal("cold diff <= 1.3x (2 x floor)", cold / (2 * floor), 1.3, "x"),
        Goal("warm-cache diff <= 0.06x sha256sum", warm / sha, 0.06, "x"),
        Goal("--no-hash diff <= 0.08x sha256sum", nohash / sha, 0.08, "x"),
        Goal("peak RSS of every surgeon run <= 300 MB", rss, 300, " MB"),
    ]


def render(plan: Plan, results: dict[str, Result], repeat: int) -> str:
    info = plan.describe()
    sha, floor = results["sha256sum"].best, results["floor"].best
    lines = [
        f"checkpoint pair: 2 x {info['bytes_per_side'] / (1 << 30):.2f} GiB bf16, "
        f"{len(plan.shard_names)} shards per side, {plan.num_layers} layers; {os.cpu_count()} cores; "
        f"best wall of {repeat}; peak RSS (max of {repeat}) from {rss_method()}",
        "",
        f"{'name':<34} {'wall s':>8} {'x sha256sum':>12} {'x floor':>8} {'peak RSS MB':>12}",
    ]
    for r in results.values():
        lines.append(f"{r.name:<34} {r.best:8.3f} {r.best / sha:12.3f} {r.best / floor:8.2f} {r.peak_rss:12.0f}")
    lines += ["", "goals:"]
    for g in goals(results):
        verdict = "PASS" if g.passed else "FAIL"
        lines.append(f"  {verdict}  {g.text:<42} {g.value:8.3f}{g.unit} (limit {g.limit}{g.unit})")
    return "\n".join(lines)


def to_json(plan: Plan, results: dict[str, Result], problems: list[str]) -> dict:
    return {
        "data": plan.describe(),
        "cpu_count": os.cpu_count(),
        "rss_method": rss_method(),
        "results": {k: asdict(r) | {"best_wall_s": r.best, "peak_rss_mb": r.peak_rss} for k, r in results.items()},
        "goals": [asdict(g) | {"passed": g.passed} for g in goals(results)],
        "correctness_problems": problems,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- main


def benchmark(args: argparse.Namespace) -> int:
    plan = make_plan(args.size_gb)
    base, other = ensure_data(args.data_dir.resolve(), plan)
    files = shard_files(base, plan) + shard_files(other, plan)
    warm_page_cache(files)
    results = {key: Result(key, name) for key, name in CASES.items()}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="surgeon-bench-") as scratch:
        for number in range(1, args.repeat + 1):
            runs = one_round(base, other, files, Path(scratch), number)
            for key, run in runs.items():
                results[key].walls.append(run.wall_s)
                results[key].rss_mb.append(run.rss_mb)
            if number == 1:
                problems = check_reports(plan, runs)
    print(render(plan, results, args.repeat))
    for problem in problems:
        print(f"WRONG: {problem}")
    print("correctness: " + ("FAIL" if problems else "PASS (reports match what was built)"))
    if args.json_out:
        args.json_out.write_text(json.dumps(to_json(plan, results, problems), indent=2) + "\n")
    return 1 if problems else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=HERE / "_data", help="where to build the pair")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each side in GiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each approach; the best counts")
    parser.add_argument("--json-out", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--naive", nargs=2, type=Path, metavar=("BASE", "OTHER"), help=argparse.SUPPRESS)
    parser.add_argument("--floor", nargs="+", type=Path, metavar="FILE", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.naive:
        naive_diff(*args.naive)
        return 0
    if args.floor:
        floor_hash(args.floor)
        return 0
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
