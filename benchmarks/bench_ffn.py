"""FFN channel pruning on a real model (issue 22): heads only, channels only (by each
importance, healed and not), both, the calibration budget's shortfall, and what a reshape
saves, each scored on independent text against the base.

Run: python benchmarks/bench_ffn.py [--model smollm2|gemma3] [--only NAME ...] [--eval-tokens 8192]
Needs: the SmolLM2 checkpoint of benchmarks/smollm2.py (or Gemma 3 270M of
benchmarks/second_model.py with --model gemma3).

Every build prunes all layers with the prune defaults but what its row names (--heal anchored,
--ridge-rel 0.01, the bundled calibration corpus at 8 tokens per column of the widest G:
SmolLM2's MLP is 1536 wide, so 12,288 tokens). The score is `surgeon eval` on the bundled
held-out text (surgeon/_data/heldout: six documents that ship with other software, of domains
the calibration corpus does not hold): perplexity against the base's and the mean KL of the
next-token distributions, over --eval-tokens tokens in packed windows of 512. "bytes saved"
is the safetensors files' size against the base's: 0 in mask mode, which keeps every shape.
A "reshaped" row is `surgeon reshape` of the mask build above it: the same model (its logits
equal the mask build's to 1e-5, tests/prune/test_prune_ffn.py), so it is scored again only
to show it loads and measures the same.

"heads 12.5%" is benchmarks/bench_domains.py's default build and "heads 33.3%, reshape"
benchmarks/bench_reshape.py's, reused where those benchmarks have made them. Each build and
score is cached under --work (benchmarks/_data/bench_ffn[-MODEL]): rerun to print the table
again; remove a build's folder to measure it anew.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_domains  # noqa: E402  (the same build, score and cell as the domains benchmark)

# name -> prune options beyond --layers all; "reshape:NAME" reshapes that build's mask build
BUILDS = {
    "heads 12.5%": ["--prune-frac", "0.125"],
    "channels 10%, wanda": ["--ffn-frac", "0.1"],
    "channels 10%, wanda, heal none": ["--ffn-frac", "0.1", "--heal", "none"],
    "channels 10%, wanda, ffn ridge 0.01": ["--ffn-frac", "0.1", "--ffn-ridge-rel", "0.01"],
    "channels 10%, wanda, ffn ridge 1": ["--ffn-frac", "0.1", "--ffn-ridge-rel", "1"],
    "channels 10%, flap, ffn ridge 0.01": ["--ffn-frac", "0.1", "--ffn-importance", "flap", "--ffn-ridge-rel", "0.01"],
    "channels 10%, obs, ffn ridge 0.01": ["--ffn-frac", "0.1", "--ffn-importance", "obs", "--ffn-ridge-rel", "0.01"],
    "channels 10%, wanda, reshaped": ["reshape:channels 10%, wanda"],
    "heads 12.5% + channels 10%": ["--prune-frac", "0.125", "--ffn-frac", "0.1"],
    "heads 33.3%, reshape": ["--mode", "reshape", "--prune-frac", "0.333"],
    "heads 33.3% + channels 10%, reshape": ["--mode", "reshape", "--prune-frac", "0.333", "--ffn-frac", "0.1"],
    # the calibration budget: 2 and 4 tokens per MLP column against the default 8 (Gemma-4-31B's
    # 21504-wide MLP gets 2.8 from the bundled corpus)
    "channels 10%, wanda, 2 tokens per column": ["--ffn-frac", "0.1", "--calib-tokens", "{w2}"],
    "channels 10%, wanda, 4 tokens per column": ["--ffn-frac", "0.1", "--calib-tokens", "{w4}"],
}
WIDTH = {"smollm2": 1536, "gemma3": 2048}
# builds other benchmarks make with the same options: linked, not built again
REUSED = {
    "heads 12.5%": ("bench_domains", "anchored_0.01"),
    "heads 33.3%, reshape": ("bench_reshape/smollm2", "reshape-0.333"),
}


def folder(work: Path, name: str) -> Path:
    return work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")


def made(model: Path, work: Path, name: str, options: list[str], width: int, model_name: str) -> Path:
    out = folder(work, name)
    reused = REUSED.get(name)
    if reused and model_name == "smollm2" and not out.exists():
        elsewhere = HERE / "_data" / reused[0] / reused[1]
        if (elsewhere / "prune_manifest.json").is_file():
            out.symlink_to(elsewhere, target_is_directory=True)
    if options[0].startswith("reshape:"):
        if not (out / "prune_manifest.json").is_file():
            masked = folder(work, options[0].split(":", 1)[1])
            subprocess.run(bench_domains.surgeon("reshape", masked, "-o", out), check=True)
        return out
    options = [o.format(w2=2 * width, w4=4 * width) for o in options]
    return bench_domains.build(model, work, name, options, {"written": ""})


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def shape_note(path: Path) -> str:
    config = json.loads((path / "config.json").read_text())
    return f"{config['num_attention_heads']} heads, intermediate_size {config['intermediate_size']}"


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
    base_size = size(model)
    print(f"base: {shape_note(model)}, {base_size / 1e6:.1f} MB")
    print("| build | independent text: ppl vs base, KL | bytes saved | shape |")
    print("|---|---|---|---|")
    for name, options in BUILDS.items():
        if args.only and name not in args.only:
            continue
        built = made(model, work, name, options, WIDTH[args.model], args.model)
        cell = bench_domains.cell(bench_domains.score(model, built, None, args.eval_tokens))
        saved = base_size - size(built)
        print(f"| {name} | {cell} | {saved / 1e6:.1f} MB ({saved / base_size:.1%}) | {shape_note(built)} |", flush=True)


if __name__ == "__main__":
    main()
