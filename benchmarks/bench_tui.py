"""Benchmark the TUI at real sizes (issue 12): how long the Tensors tab takes to open and a
filter to apply, on a synthetic mixture-of-experts pair of about 20k and 100k tensors,
driven by Textual's Pilot headless, against the goals (tab switch and filter under 0.3 s at
20k tensors, under 1 s at 100k).

Run: python benchmarks/bench_tui.py [--sizes 20000 100000]

Each pair is fixtures/build_moe_pair.py's naming with tiny tensors (the TUI's cost is per
tensor, not per byte), built once under benchmarks/_data/tui-<n>. The app hashes and diffs
the pair first (not timed here: benchmarks/bench_diff.py times that); then the timings:
  tab:    "2" pressed until the Tensors table is drawn with every row it shows;
  filter: the last key of a word typed into the filter box until the table shows exactly
          the matches (the filter runs once typing pauses for 0.15 s, which this includes).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fixtures.build_moe_pair import moe_pair  # noqa: E402

GOALS = {20000: 0.3, 100000: 1.0}  # seconds, for both the tab switch and the filter
LAYERS = 48
FILTER = "experts.7.up"


def ensure_pair(size: int) -> tuple[Path, Path]:
    folder = HERE / "_data" / f"tui-{size}"
    experts = max(1, size // (LAYERS * 3))
    marker = folder / f"built-{LAYERS}x{experts}"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        moe_pair(folder, "qwen-moe", {(5, 3): "up_proj", (5, 17): "up_proj"}, layers=LAYERS, experts=experts)
        marker.touch()
    return folder / "base", folder / "other"


async def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit("the TUI never reached the state measured")
        await asyncio.sleep(0.005)


async def measure(size: int) -> dict[str, float]:
    from surgeon.tui.app import SurgeonApp
    from surgeon.tui.panes import TensorsPane

    base, other = ensure_pair(size)
    app = SurgeonApp(base, other)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(lambda: app.report is not None and app.job is None, timeout=1800)
        await pilot.pause()
        pane = app.query_one(TensorsPane)
        total = len(app.report.tensors)
        started = time.perf_counter()
        await pilot.press("2")
        await wait_for(lambda: bool(pane.tensors) and not pane.stale and pane.is_on_screen)
        await pilot.pause()
        tab = time.perf_counter() - started
        expected = sum(1 for t in app.report.tensors if FILTER in t.name.lower())
        await pilot.click("#filter-text")
        await pilot.press(*FILTER[:-1])  # typed before the clock starts: the filter waits for a pause
        started = time.perf_counter()
        await pilot.press(FILTER[-1])
        await wait_for(lambda: len(pane.shown) == expected)
        await pilot.pause()
        filtered = time.perf_counter() - started
        await pilot.press("ctrl+q")
    return {"tensors": total, "tab": tab, "filter": filtered, "matches": expected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    args = parser.parse_args()
    for size in args.sizes:
        result = asyncio.run(measure(size))
        goal = GOALS.get(size, 1.0)
        for name in ("tab", "filter"):
            seconds = result[name]
            verdict = "meets" if seconds <= goal else "misses"
            print(
                f"{result['tensors']:>7} tensors  {name:<6} {seconds:6.2f} s  goal {goal:.1f} s: {verdict} "
                f"({seconds / goal:.1f}x the goal)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
