"""Benchmark the everyday `surgeon diff` (issue 18, section 5): a warm hash cache and
`--no-hash`, as ratios to `sha256sum` of the same files, and the start-up of `--help`,
for the working tree and (with --compare REV) a git revision, side by side in one run.

Run: python benchmarks/bench_startup.py [--compare REV] [--rounds 5] [--size-gb 1.0]

The pair is bench_diff.py's (built once under --data-dir, benchmarks/_data by default, and
shared with bench_diff.py): a llama-like bf16 checkpoint pair with q/o_proj of four layers
changed, so the diff also computes its numeric stats and per-head view. Every file is read
once first, so all of it is in the page cache.

Each variant (the working tree, REV) runs from a copy of its `surgeon/` package on
PYTHONPATH, the same way for both: `python -c "from surgeon.cli.main import main; main()"`,
which is what the `surgeon` console script does. REV's package is exported with `git
archive`; the repository and the working tree are left as they are. Each variant has its
own hash cache, filled by one untimed cold run, so "warm" reads no tensor bytes of
identical shards.

Bytecode: an installed surgeon runs from cached bytecode (pip compiles it), while this dev
box sets PYTHONDONTWRITEBYTECODE=1, so an editable checkout compiles every surgeon module at
each start (about 60-100 ms more here). Both are measured: "pyc" with a fresh
PYTHONPYCACHEPREFIX for the run (filled by an untimed first run), "no pyc" with
PYTHONDONTWRITEBYTECODE=1 and no cache. Site-packages (numpy, click, rich) keep their own
bytecode in both.

A round runs sha256sum over both sides once, then every variant and case once, in an order
that rotates from round to round (load that comes and goes falls on all of them). A ratio
is taken within its round (the case's wall over that round's sha256sum wall), then the
median over the rounds is printed with the range. The machine is shared with other jobs,
so a single figure means little: compare the medians, and rerun on a quiet machine for the
numbers to quote. CPU seconds (user + system of the child) are printed too: they move less
with load than wall seconds.

Measured quiet (benchmarks/README.md has the tables), 256077a -> now: warm-cache diff
0.052x -> 0.024x, --no-hash 0.086x -> 0.068x (both goals met; --no-hash by a small margin).

Checked in the same run: every surgeon run exits 0 or 1, and every variant prints the same
JSON report as the working tree for each case (the deferred imports must not change what
`diff` says).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_diff  # noqa: E402  (the pair, its builder and the page-cache warm-up)

GOALS = {"warm": 0.05, "nohash": 0.07}  # x sha256sum, from the issue
DIFF_OK = (0, 1)
# `surgeon --help` and `surgeon diff --help` are start-up alone; the diffs are start-up plus work.
CASES = {
    "help": ("surgeon --help", ["--help"]),
    "diff-help": ("surgeon diff --help", ["diff", "--help"]),
    "warm": (
        "surgeon diff (warm cache)",
        ["diff", "{base}", "{other}", "--json", "--no-progress", "--cache-dir", "{cache}"],
    ),
    "nohash": (
        "surgeon diff --no-hash",
        ["diff", "{base}", "{other}", "--json", "--no-progress", "--no-hash", "--no-cache"],
    ),
}
RATIO_CASES = ("warm", "nohash")
LAUNCH = "from surgeon.cli.main import main; main()"


@dataclass
class Variant:
    label: str
    package_root: Path  # the folder holding surgeon/
    cache: Path
    pyc: bool
    pycache: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.package_root), HF_HUB_OFFLINE="1")
        env.pop("PYTHONPYCACHEPREFIX", None)
        if self.pyc:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def command(self, case: str, base: Path, other: Path) -> list[str]:
        fill = {"base": str(base), "other": str(other), "cache": str(self.cache)}
        return [sys.executable, "-c", LAUNCH, *(arg.format(**fill) for arg in CASES[case][1])]


@dataclass
class Timing:
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def run(command: list[str], env: dict | None = None, ok: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system, from this process's children's usage) and stdout.
    The child runs in the system's temp folder: `python -c` puts its working folder first on
    sys.path, and in the checkout that would import the working tree's surgeon for every variant."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(command[:4])}... exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def export_package(revision: str, into: Path) -> Path:
    """`surgeon/` of git `revision` under `into` (git archive: nothing in the repository changes)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision, "surgeon"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def make_variants(args: argparse.Namespace, scratch: Path) -> list[Variant]:
    roots = {"working tree": ROOT}
    if args.compare:
        roots = {args.compare: export_package(args.compare, scratch / "rev"), **roots}
    modes = (True, False) if args.bytecode == "both" else (args.bytecode == "pyc",)
    variants = []
    for number, (label, root) in enumerate(roots.items()):
        for pyc in modes:
            name = f"{label} ({'pyc' if pyc else 'no pyc'})"
            variants.append(Variant(name, root, scratch / f"cache-{number}", pyc, scratch / f"pyc-{number}"))
    return variants


def prepare(variants: list[Variant], base: Path, other: Path) -> None:
    """Untimed: check that each variant imports its own surgeon/, then fill its hash cache
    (a cold diff) and bytecode cache (any run)."""
    for variant in variants:
        where = run([sys.executable, "-c", "import surgeon; print(surgeon.__file__)"], variant.env())[2].strip()
        if not Path(where).is_relative_to(variant.package_root):
            raise SystemExit(f"{variant.label} imports surgeon from {where}, not from {variant.package_root}")
        run(variant.command("warm", base, other), variant.env(), DIFF_OK)
        run(variant.command("help", base, other), variant.env())


def one_round(number: int, variants: list[Variant], base, other, files, timings, reports) -> None:
    sha_wall, sha_cpu, _ = run(["sha256sum", *map(str, files)])
    timings["sha256sum"].walls.append(sha_wall)
    timings["sha256sum"].cpus.append(sha_cpu)
    jobs = [(v, case) for v in variants for case in CASES]
    shift = number % len(jobs)
    for variant, case in jobs[shift:] + jobs[:shift]:
        ok = DIFF_OK if case in RATIO_CASES else (0,)
        wall, cpu, out = run(variant.command(case, base, other), variant.env(), ok)
        timing = timings[(variant.label, case)]
        timing.walls.append(wall)
        timing.cpus.append(cpu)
        timing.ratios.append(wall / sha_wall)
        if case in RATIO_CASES and number == 0:
            reports[(variant.label, case)] = json.loads(out)
    bench_diff.log(f"  round {number + 1}: sha256sum {sha_wall:.2f} s")


def spread(values: list[float], digits: int = 3) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def render(variants: list[Variant], timings: dict, rounds: int, size_bytes: int) -> str:
    sha = timings["sha256sum"]
    lines = [
        f"pair: 2 x {size_bytes / 1e9:.2f} GB bf16, page cache warm; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} at the end; median (min-max) of {rounds} rounds",
        f"sha256sum of both sides: wall {spread(sha.walls, 2)} s, CPU {spread(sha.cpus, 2)} s",
        "",
        f"{'variant':<28} {'case':<26} {'wall s':>20} {'CPU s':>20} {'x sha256sum':>20}",
    ]
    for case, (name, _) in CASES.items():
        for variant in variants:
            t = timings[(variant.label, case)]
            ratio = spread(t.ratios) if case in RATIO_CASES else ""
            lines.append(f"{variant.label:<28} {name:<26} {spread(t.walls):>20} {spread(t.cpus):>20} {ratio:>20}")
    lines += ["", "goals (median ratio within its round):"]
    for case, limit in GOALS.items():
        for variant in variants:
            value = statistics.median(timings[(variant.label, case)].ratios)
            verdict = "meets" if value <= limit else "misses"
            lines.append(f"  {variant.label:<28} {CASES[case][0]:<26} {value:.3f}x  goal <= {limit}x: {verdict}")
    return "\n".join(lines)


def check_reports(variants: list[Variant], reports: dict) -> list[str]:
    """Every variant's report must be the working tree's, case by case."""
    reference = next(v for v in variants if v.label.startswith("working tree"))
    problems = []
    for variant in variants:
        for case in RATIO_CASES:
            if reports[(variant.label, case)] != reports[(reference.label, case)]:
                problems.append(f"{variant.label}: its {CASES[case][0]} report differs from {reference.label}'s")
    return problems


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REV", help="also measure surgeon/ of this git revision, e.g. HEAD~1")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case (medians and ranges)")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each side in GiB (bench_diff's)")
    parser.add_argument("--data-dir", type=Path, default=HERE / "_data", help="where the pair is built")
    parser.add_argument("--bytecode", choices=("both", "pyc", "none"), default="both", help="see the docstring")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    plan = bench_diff.make_plan(args.size_gb)
    base, other = bench_diff.ensure_data(args.data_dir.resolve(), plan)
    files = bench_diff.shard_files(base, plan) + bench_diff.shard_files(other, plan)
    bench_diff.warm_page_cache(files)
    with tempfile.TemporaryDirectory(prefix="surgeon-startup-") as scratch:
        variants = make_variants(args, Path(scratch))
        prepare(variants, base, other)
        timings: dict = {"sha256sum": Timing()}
        timings.update({(v.label, case): Timing() for v in variants for case in CASES})
        reports: dict = {}
        for number in range(args.rounds):
            one_round(number, variants, base, other, files, timings, reports)
    print(render(variants, timings, args.rounds, plan.describe()["bytes_per_side"]))
    problems = check_reports(variants, reports)
    for problem in problems:
        print(f"WRONG: {problem}")
    print("reports: " + ("DIFFER" if problems else "the same JSON from every variant"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
