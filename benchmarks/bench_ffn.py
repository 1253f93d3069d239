"""FFN channel pruning on a real model (issue 22): heads only, channels only (by each
importance, healed and not), both, and the calibration budget's shortfall, each scored on
independent text against the base.

Run: python benchmarks/bench_ffn.py [--model smollm2|gemma3] [--only NAME ...] [--eval-tokens 8192]
Needs: the SmolLM2 checkpoint of benchmarks/smollm2.py (or Gemma 3 270M of
benchmarks/second_model.py with --model gemma3).

Every build prunes all layers with the prune defaults (--heal anchored, --ridge-rel 0.01, the
bundled calibration corpus at 8 tokens per column of the widest G: SmolLM2's MLP is 1536 wide,
so 12,288 tokens). The score is `surgeon eval` on the bundled held-out text (surgeon/_data/heldout:
six documents that ship with other software, of domains the calibration corpus does not hold):
perplexity against the base's and the mean KL of the next-token distributions, over
--eval-tokens tokens in packed windows of 512. Mask mode keeps every shape: bytes saved are 0.

Each build and score is cached under --work (benchmarks/_data/bench_ffn[-MODEL]): rerun to
print the table again; remove a build's folder to measure it anew.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_domains  # noqa: E402  (the same build, score and cell as the domains benchmark)

# name -> prune options beyond --layers all
BUILDS = {
    "heads 12.5%": ["--prune-frac", "0.125"],
    "channels 10%, wanda": ["--ffn-frac", "0.1", "--ffn-importance", "wanda"],
    "channels 10%, wanda, heal none": ["--ffn-frac", "0.1", "--ffn-importance", "wanda", "--heal", "none"],
    "channels 10%, flap": ["--ffn-frac", "0.1", "--ffn-importance", "flap"],
    "channels 10%, obs": ["--ffn-frac", "0.1", "--ffn-importance", "obs"],
    "heads 12.5% + channels 10%": ["--prune-frac", "0.125", "--ffn-frac", "0.1"],
    "channels 10%, lstsq": ["--ffn-frac", "0.1", "--heal", "lstsq"],
    # the calibration budget: 2 and 32 tokens per MLP column against the default 8
    "channels 10%, 2 tokens/column": ["--ffn-frac", "0.1", "--calib-tokens", "{width2}"],
    "channels 10%, 32 tokens/column": ["--ffn-frac", "0.1", "--calib-tokens", "{width32}"],
}
WIDTH = {"smollm2": 1536, "gemma3": 2048}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="build names to run (default: all)")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--model", choices=sorted(bench_domains.MODELS), default="smollm2")
    parser.add_argument("--work", type=Path, help="default: benchmarks/_data/bench_ffn[-MODEL]")
    args = parser.parse_args()
    suffix = "" if args.model == "smollm2" else f"-{args.model}"
    work = args.work or HERE / "_data" / f"bench_ffn{suffix}"
    work.mkdir(parents=True, exist_ok=True)
    model = bench_domains.MODELS[args.model]()
    width = WIDTH[args.model]
    print("| build | independent text: ppl vs base, KL |")
    print("|---|---|")
    for name, options in BUILDS.items():
        if args.only and name not in args.only:
            continue
        options = [o.format(width2=2 * width, width32=32 * width) for o in options]
        built = bench_domains.build(model, work, name, options, {"written": ""})
        cell = bench_domains.cell(bench_domains.score(model, built, None, args.eval_tokens))
        print(f"| {name} | {cell} |", flush=True)


if __name__ == "__main__":
    main()
