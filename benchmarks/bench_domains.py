"""Quality in and out of the calibration's domain (issue 19): the same builds of a real model,
scored on text of the calibration corpus's own kind and on independent text.

Run: python benchmarks/bench_domains.py [--model smollm2|gemma3] [--only NAME ...] [--eval-tokens 8192]
Needs: the SmolLM2 checkpoint of benchmarks/smollm2.py, or with --model gemma3 Gemma 3 270M
of benchmarks/second_model.py (each converted on first use).

The model is SmolLM2-135M-Instruct (30 layers, 9 query heads); every build prunes 1 of 9 heads
in all 30 layers (the default 12.5%). With --model gemma3, Gemma 3 270M (18 layers, 4 query
heads over 1 kv head): the default 12.5% rounds to 1 of 4 heads (25%) in every layer. Four
texts score each build (`surgeon eval`, packed windows of 512, --eval-tokens of each):
- **corpus kind**: the bundled calibration corpus's documents that its default calibration
  budget (8192 tokens for this model) never reaches, the last third of its interleaved order:
  text written in the same hand as what the heal was fitted on, not the same documents;
- **independent**: the bundled held-out text (surgeon/_data/heldout, six documents that ship
  with other software; PROVENANCE.md);
- **Python reference**: the two chapters of the Python Language Reference in the bundled
  held-out text (`langref-*.txt`), the "own domain" of the builds calibrated with
  `--calib` on the reference's other chapters (from this Python's own `pydoc_data`, the
  chapters in the held-out text left out);
- **other documents**: the held-out text's other four (two licences, IDLE's release notes,
  the AWS CLI's S3 manual), a domain no build here was calibrated on.

Each build and each score is cached under --work (benchmarks/_data/bench_domains): rerun to
print the table again; remove a build's folder to measure it anew.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import second_model  # noqa: E402  (Gemma 3 270M, converted on first use)
import smollm2  # noqa: E402  (the converted checkpoint)

MODELS = {"smollm2": smollm2.convert, "gemma3": second_model.convert}

HELDOUT = ROOT / "surgeon" / "_data" / "heldout"
CORPUS = ROOT / "surgeon" / "_data" / "calibration"
HELD_TOPICS = ("execmodel", "assignment")  # the reference chapters in the bundled held-out text

# name -> prune options beyond --layers all (the default fraction, importance and ridge)
BUILDS = {
    "lstsq (default)": ["--heal", "lstsq"],
    "anchored 0.01": ["--heal", "anchored"],
    "anchored 0.1": ["--heal", "anchored", "--ridge-rel", "0.1"],
    "anchored 1.0": ["--heal", "anchored", "--ridge-rel", "1.0"],
    "none": ["--heal", "none"],
    "lstsq, 60k tokens": ["--heal", "lstsq", "--calib-tokens", "60000"],
    "lstsq, own domain": ["--heal", "lstsq", "--calib", "{reference}"],
    # the bundled corpus and the reference's chapters in pieces of ~4000 characters, alternately
    "lstsq, corpus + reference": ["--heal", "lstsq", "--calib", "{corpus_reference}"],
}


def surgeon(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgeon.cli.main", *map(str, args)]


def write_texts(work: Path) -> dict[str, Path]:
    """The three scoring texts and the own-domain calibration text, as JSON lines."""
    from pydoc_data.topics import topics  # CPython's own Language Reference chapters

    sys.path.insert(0, str(ROOT))
    from surgeon.runtime.corpus import bundled_corpus

    corpus, _ = bundled_corpus()  # interleaved by genre, as the default calibration reads it
    texts = {
        "corpus kind": [doc for doc in corpus[2 * len(corpus) // 3 :]],
        "Python reference": [(HELDOUT / f"langref-{n}.txt").read_text() for n in ("assignment", "execution-model")],
        "other documents": [f.read_text() for f in sorted(HELDOUT.glob("*.txt")) if not f.name.startswith("langref-")],
        "reference": [body for name, body in sorted(topics.items()) if name not in HELD_TOPICS],
    }
    texts["corpus + reference"] = _alternate(corpus, _spread_chunks(texts["reference"]))
    paths = {}
    for name, docs in texts.items():
        path = work / f"{name.replace(' ', '-')}.jsonl"
        path.write_text("".join(json.dumps({"text": d.strip()}) + "\n" for d in docs))
        paths[name] = path
    return paths


def _spread_chunks(documents: list[str], limit: int = 4000) -> list[str]:
    """Each document cut at blank lines into pieces of about LIMIT characters, then one piece of
    each document in turn, so that a calibration budget's first tokens span them all."""
    pieces = []
    for text in documents:
        cut, current = [], ""
        for para in text.strip().split("\n\n"):
            if current and len(current) + len(para) > limit:
                cut.append(current)
                current = ""
            current = f"{current}\n\n{para}" if current else para
        pieces.append([*cut, current] if current else cut)
    spread = []
    while any(pieces):
        spread += [p.pop(0) for p in pieces if p]
    return spread


def _alternate(first: list[str], second: list[str]) -> list[str]:
    return (
        [doc for pair in zip(first, second, strict=False) for doc in pair] + first[len(second) :] + second[len(first) :]
    )


def build(model: Path, work: Path, name: str, options: list[str], texts: dict[str, Path]) -> Path:
    out = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    if not (out / "prune_manifest.json").is_file():
        options = [
            o.format(reference=texts["reference"], corpus_reference=texts["corpus + reference"]) for o in options
        ]
        started = time.perf_counter()
        subprocess.run(surgeon("prune", model, "-o", out, "--layers", "all", *options, "-q"), check=True)
        print(f"  built {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return out


def score(model: Path, built: Path, text: Path | None, tokens: int) -> dict:
    cached = built / f".score-{text.stem if text else 'independent'}-{tokens}.json"
    if not cached.is_file():
        args = ["eval", built, "--base", model, "--eval-tokens", tokens, "--json", "--no-progress"]
        args += ["--eval-text", text] if text else []
        result = subprocess.run(surgeon(*args), check=True, capture_output=True, text=True)
        cached.write_text(result.stdout)
    return json.loads(cached.read_text())["totals"]


def cell(totals: dict) -> str:
    return f"{totals['ppl_ratio'] - 1:+.1%}, KL {totals['kl_mean']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="build names to run (default: all)")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="smollm2", help="smollm2 or gemma3 (second_model.py)"
    )
    parser.add_argument("--work", type=Path, help="default: benchmarks/_data/bench_domains[-MODEL]")
    args = parser.parse_args()
    suffix = "" if args.model == "smollm2" else f"-{args.model}"
    args.work = args.work or HERE / "_data" / f"bench_domains{suffix}"
    args.work.mkdir(parents=True, exist_ok=True)
    model = MODELS[args.model]()
    texts = write_texts(args.work)
    columns = [
        ("corpus kind", texts["corpus kind"]),
        ("independent", None),
        ("Python reference", texts["Python reference"]),
        ("other documents", texts["other documents"]),
    ]
    print("| build | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, options in BUILDS.items():
        if args.only and name not in args.only:
            continue
        built = build(model, args.work, name, options, texts)
        cells = [cell(score(model, built, text, args.eval_tokens)) for _, text in columns]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
