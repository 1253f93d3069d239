"""What reshape mode saves: parameters, bytes on disk, and the forward pass on CPU, of a base,
its mask-mode prune and its reshaped prune of the same fraction, measured side by side in one
run (issue 21.6).

Run:
  python benchmarks/bench_reshape.py --model demo                  # the bundled tiny Gemma 4, 0.25
  python benchmarks/bench_reshape.py --model smollm2 --frac 0.333  # after benchmarks/smollm2.py

The prunes are made once into --work (SmolLM2: about 5 minutes each on 2 cores); the timing
loads each model with transformers in float32 and runs `--batch` sequences of `--tokens`
tokens through it, `--repeat` times after a warm-up, interleaving the three models so that
load on the shared box falls on all of them alike; the median is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {
    "demo": (ROOT / "surgeon" / "_data" / "demo" / "model", 0.25),
    "smollm2": (HERE / "_data" / "smollm2-135m-instruct", 0.333),
}


def surgeon(*args: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "surgeon", *args], env=env, check=True)


def prunes(base: Path, frac: float, work: Path) -> dict[str, Path]:
    out = {"base": base, "mask": work / f"mask-{frac}", "reshape": work / f"reshape-{frac}"}
    if not out["mask"].exists():
        surgeon("prune", str(base), "-o", str(out["mask"]), "--prune-frac", str(frac), "-q")
    if not out["reshape"].exists():
        surgeon("prune", str(base), "-o", str(out["reshape"]), "--mode", "reshape", "--prune-frac", str(frac), "-q")
    return out


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument("--frac", type=float, help="fraction of query heads removed (default: the model's)")
    parser.add_argument("--work", type=Path, default=HERE / "_data" / "bench_reshape")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    base, default_frac = MODELS[args.model]
    frac = args.frac if args.frac is not None else default_frac
    work = args.work / args.model
    work.mkdir(parents=True, exist_ok=True)
    folders = prunes(base, frac, work)

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    models = {
        name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval() for name, path in folders.items()
    }
    vocab = models["base"].config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(ids)  # warm-up
        for _ in range(args.repeat):
            for name, model in models.items():
                start = time.perf_counter()
                model(ids)
                times[name].append(time.perf_counter() - start)
    base_time = statistics.median(times["base"])
    print(f"{args.model}, {frac} of query heads; forward of {args.batch}x{args.tokens} tokens, median of {args.repeat}")
    print(f"{'model':<8} {'parameters':>12} {'bytes':>12} {'forward':>9} {'x base':>7}")
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        median = statistics.median(times[name])
        print(f"{name:<8} {params:>12,} {size(folders[name]):>12,} {median:>8.3f}s {median / base_time:>7.3f}")


if __name__ == "__main__":
    main()
