"""Benchmark surgeon's torch thread policy (surgeon/runtime/threads.py) against torch's
default, side by side: `surgeon demo` (the tiny model: prune, eval, canary, budget salvage,
diff, verify), run alternately with the policy (one thread for a model this small) and with
SURGEON_THREADS set to torch's default (one thread per core), each in a fresh child.

Run: python benchmarks/bench_threads.py [--repeat 3]

The issue (11) measured 191-258 s with torch's default against 15.7 s on one thread under
load on 2 cores; the ratio depends on how busy the machine is, so run it as the machine
really is (beside CI, say) and read the load average printed with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_diff import measure, surgeon_command  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    default = torch.get_num_threads()
    cases = {"policy (1 thread)": {}, f"torch default ({default} threads)": {"SURGEON_THREADS": str(default)}}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="surgeon-bench-threads-") as tmp:
        for round_ in range(args.repeat):
            for name, env in cases.items():
                folder = Path(tmp) / f"demo-{round_}"
                run = measure([surgeon_command(), "demo", str(folder), "--force"], env_extra=env)
                best[name] = min(best.get(name, float("inf")), run.wall_s)
                print(f"round {round_ + 1}: {name:<28} {run.wall_s:7.1f} s  (load {os.getloadavg()[0]:.1f})")
    policy, torch_default = best.values()
    print(f"best of {args.repeat}: policy {policy:.1f} s, torch default {torch_default:.1f} s")
    print(f"ratio torch default / policy: {torch_default / policy:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
