"""CI: the wheel holds surgeon and only surgeon (the TUI as surgeon.tui, never a top-level
`tui`), with every runtime file the installed commands read."""

import sys
import zipfile

REQUIRED = [
    "surgeon/_data/canary_prompts.jsonl",
    "surgeon/_data/demo/training.txt",
    "surgeon/_data/heldout/PROVENANCE.md",
    "surgeon/_data/calibration/PROVENANCE.md",
    "surgeon/_data/calibration/pyref-79.txt",
    "surgeon/_data/demo/prompts.txt",
    "surgeon/_data/demo/model/config.json",
    "surgeon/_data/demo/model/tokenizer.json",
    "surgeon/_data/demo/candidate/prune_manifest.json",
    "surgeon/tui/app.py",
    "surgeon/tui/app.tcss",
    "surgeon/cli/main.py",
]
AT_LEAST = {  # folder -> how many files it must hold
    "surgeon/_data/calibration/": 155,  # 75 written, 79 from the Python reference, PROVENANCE.md
    "surgeon/_data/heldout/": 7,  # six documents and their PROVENANCE.md
    "surgeon/_data/demo/model/": 7,
    "surgeon/_data/demo/candidate/": 8,
}


def _entry_points(path: str, tops: set) -> str:
    info = next((top for top in tops if top.endswith(".dist-info")), None)
    return zipfile.ZipFile(path).read(f"{info}/entry_points.txt").decode() if info else ""


def main(path: str) -> int:
    names = zipfile.ZipFile(path).namelist()
    tops = {n.split("/")[0] for n in names}
    problems = [f"top-level {top!r}" for top in tops if top != "surgeon" and not top.endswith(".dist-info")]
    # the index name (surgeon.DISTRIBUTION): `surgeon` on the index is an unrelated package
    problems += [
        f"dist-info {top!r}" for top in tops if top.endswith(".dist-info") and not top.startswith("checkpoint_surgeon-")
    ]
    if "surgeon = surgeon.cli.main:main" not in _entry_points(path, tops):
        problems.append("no `surgeon` console script")
    problems += [f"missing {n}" for n in REQUIRED if n not in names]
    for folder, least in AT_LEAST.items():
        found = sum(n.startswith(folder) for n in names)
        if found < least:
            problems.append(f"{folder}: {found} files, expected at least {least}")
    for problem in sorted(set(problems)):
        print(f"wheel: {problem}")
    print(f"{path}: {len(names)} files" + (", OK" if not problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
