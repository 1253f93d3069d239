"""Quality in and out of the calibration's domain (issue 19): the same builds of a real model,
scored on text of the calibration corpus's own kind and on independent text.

Run: python benchmarks/bench_domains.py [--model smollm2|gemma3] [--only NAME ...] [--eval-tokens 8192]
                                        [--alice alice.txt]
Needs: the SmolLM2 checkpoint of benchmarks/smollm2.py, or with --model gemma3 Gemma 3 270M
of benchmarks/second_model.py (each converted on first use). The "own domain (fiction)" build
runs only with --alice: Project Gutenberg's Alice's Adventures in Wonderland as plain text
(e.g. examples/alice.txt in the wordcloud 1.9.6 sdist), calibrated on its chapters I-VIII.

The model is SmolLM2-135M-Instruct (30 layers, 9 query heads); every build prunes 1 of 9 heads
in all 30 layers (the default 12.5%). With --model gemma3, Gemma 3 270M (18 layers, 4 query
heads over 1 kv head): the default 12.5% rounds to 1 of 4 heads (25%) in every layer. Four
texts score each build (`surgeon eval`, packed windows of 512, --eval-tokens of each):
- **corpus kind**: the written half of the bundled calibration corpus (surgeon/_data/calibration,
  the files not named pyref-*) that the default budget (8192 tokens for this model) never
  reaches, the last third of its interleaved order: text written in the same hand as half of
  what the heal was fitted on, not the same documents;
- **independent**: the bundled held-out text (surgeon/_data/heldout, six documents that ship
  with other software; PROVENANCE.md);
- **fiction**: the held-out text's chapter of Alice's Adventures in Wonderland;
- **legal, release notes**: the held-out text's two licences and Rust's release notes, domains
  that neither half of the calibration corpus (written genres; the Python Language Reference)
  holds.

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

# name -> prune options beyond --layers all (the default fraction, importance and ridge)
BUILDS = {
    "lstsq": ["--heal", "lstsq"],
    "anchored 0.01": ["--heal", "anchored"],
    "anchored 0.1": ["--heal", "anchored", "--ridge-rel", "0.1"],
    "none": ["--heal", "none"],
    "norm importance": ["--heal", "anchored", "--importance", "norm"],
    "anchored, 60k tokens": ["--heal", "anchored", "--calib-tokens", "60000"],
    # the corpus before issue 19: its written documents alone, interleaved by genre
    "lstsq, written only": ["--heal", "lstsq", "--calib", "{written}"],
    # calibrated on the fiction column's own domain: chapters I-VIII of the same book (--alice)
    "anchored, own domain (fiction)": ["--heal", "anchored", "--calib", "{alice}"],
}


DEFAULT = "anchored 0.01"  # the build with surgeon prune's defaults (--heal anchored --ridge-rel 0.01)


def surgeon(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgeon.cli.main", *map(str, args)]


def write_texts(work: Path, alice: Path | None = None) -> dict[str, Path]:
    """The scoring texts and the written-only calibration text, as JSON lines; with `alice`
    (Project Gutenberg's eBook #11 as plain text), its chapters I-VIII as a calibration text."""
    sys.path.insert(0, str(ROOT))
    from surgeon.runtime.corpus import SHIPPED_GENRES, bundled_corpus

    corpus, _ = bundled_corpus()  # in the order the default calibration reads it
    shipped = {f.read_text().strip() for f in CORPUS.glob("*.txt") if f.name.rsplit("-", 1)[0] in SHIPPED_GENRES}
    written = [doc for doc in corpus if doc not in shipped]
    held = {f.name: f.read_text() for f in sorted(HELDOUT.glob("*.txt"))}
    texts = {
        "corpus kind": written[2 * len(written) // 3 :],
        "fiction": [body for name, body in held.items() if name.startswith("fiction-")],
        "legal, release notes": [body for name, body in held.items() if name.startswith(("legal-", "release-"))],
        "written": written,
    }
    if alice:
        book = alice.read_text(encoding="utf-8-sig")
        chapters = book.split("\nCHAPTER ")[1:9]  # I-VIII: the held-out chapter is IX
        texts["alice"] = ["CHAPTER " + chapter.strip() for chapter in chapters]
    paths = {}
    for name, docs in texts.items():
        path = work / f"{name.replace(' ', '-').replace(',', '')}.jsonl"
        path.write_text("".join(json.dumps({"text": d.strip()}) + "\n" for d in docs))
        paths[name] = path
    return paths


def build(model: Path, work: Path, name: str, options: list[str], texts: dict[str, Path]) -> Path:
    out = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    if not (out / "prune_manifest.json").is_file():
        options = [o.format(written=texts["written"], alice=texts.get("alice")) for o in options]
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
    parser.add_argument(
        "--alice",
        type=Path,
        help="Alice's Adventures in Wonderland as plain text (Project Gutenberg eBook #11, e.g. "
        "examples/alice.txt of the wordcloud sdist): builds the 'own domain (fiction)' row",
    )
    args = parser.parse_args()
    suffix = "" if args.model == "smollm2" else f"-{args.model}"
    args.work = args.work or HERE / "_data" / f"bench_domains{suffix}"
    args.work.mkdir(parents=True, exist_ok=True)
    model = MODELS[args.model]()
    texts = write_texts(args.work, args.alice)
    columns = [
        ("corpus kind", texts["corpus kind"]),
        ("independent", None),
        ("fiction", texts["fiction"]),
        ("legal, release notes", texts["legal, release notes"]),
    ]
    print("| build | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, options in BUILDS.items():
        if (args.only and name not in args.only) or ("{alice}" in options and "alice" not in texts):
            continue
        built = build(model, args.work, name, options, texts)
        cells = [cell(score(model, built, text, args.eval_tokens)) for _, text in columns]
        label = f"{name} (default)" if name == DEFAULT else name
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
