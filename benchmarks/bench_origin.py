"""surgeon origin on real quants: llama.cpp's own converter and llama-quantize make Q8_0, Q4_0
and Q4_K_M GGUFs (and an F32 one) of SmolLM2-135M-Instruct (base), of a prune of 1 of 9 heads
in all 30 layers (pruned) and of its salvage keeping layers 0-3 (salvaged); each quant is then
attributed among the three. Prints one row per quant: the answer, every candidate's score, the
exit status, wall time and peak RSS.

Run (after `python benchmarks/smollm2.py` and `python benchmarks/llamacpp.py build`):
  python benchmarks/bench_origin.py [--work DIR] [--types Q8_0 Q4_0 Q4_K_M]

The prune and the salvage are made once into --work (about 10 minutes on 2 cores), the quants
once per type (seconds each); surgeon origin runs as a user runs it, a subprocess per quant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from llamacpp import QUANTIZE, make_quants  # noqa: E402  (this folder's own module)

BASE = HERE / "_data" / "smollm2-135m-instruct"
DEFAULT_WORK = HERE / "_data" / "bench_origin"


def surgeon(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "surgeon", *args], env=env, capture_output=True, text=True, check=check
    )


def candidates(work: Path) -> dict[str, Path]:
    """base, pruned and salvaged, made once."""
    pruned, salvaged = work / "pruned", work / "salvaged"
    if not pruned.exists():
        surgeon("prune", str(BASE), "-o", str(pruned), "-q")
    if not salvaged.exists():
        surgeon("salvage", str(pruned), "--base", str(BASE), "--keep", "0-3", "-o", str(salvaged), "-q")
    return {"base": BASE, "pruned": pruned, "salvaged": salvaged}


def attribute(quant: Path, found: dict[str, Path]) -> tuple[dict, int, float, float]:
    """(surgeon origin's JSON, exit status, wall seconds, peak RSS MB of that one child: its
    own rusage from wait4, not the running maximum over every child RUSAGE_CHILDREN keeps)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "surgeon", "origin", str(quant), *map(str, found.values()), "--json", "--no-progress"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode not in (0, 1):
            raise SystemExit(f"surgeon origin {quant}: {err.read().strip()}")
        return json.loads(out.read()), child.returncode, wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0", "Q4_K_M"])
    args = parser.parse_args()
    if not QUANTIZE.exists():
        raise SystemExit(f"no llama-quantize at {QUANTIZE}: run python benchmarks/llamacpp.py build")
    args.work.mkdir(parents=True, exist_ok=True)
    found = candidates(args.work)
    names = {str(path): name for name, path in found.items()}
    right = 0
    print(f"{'made from':<10} {'type':<7} {'answer':<10} " + " ".join(f"{n:>9}" for n in found) + "   exit  wall   RSS")
    for made_from, folder in found.items():
        quants = make_quants(folder, args.work / "quants" / made_from, args.types, made_from)
        for qtype, quant in quants.items():
            report, code, wall, peak = attribute(quant, found)
            scores = {names[c["source"]]: c["score"] for c in report["candidates"]}
            best = names.get(report["best"] or "", "none")
            right += best == made_from
            cells = " ".join(f"{scores[n]:>9.4f}" for n in found)
            print(f"{made_from:<10} {qtype:<7} {best:<10} {cells}   {code:>4} {wall:5.1f}s {peak:4.0f}MB", flush=True)
    total = len(found) * (len(args.types) + 1)  # and the F32 GGUF of each
    print(f"attributed to the checkpoint it was made from: {right} of {total}")


if __name__ == "__main__":
    main()
