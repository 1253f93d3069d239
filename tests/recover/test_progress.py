"""Every long step reports live progress (issue 12, section 1): prune counts layers 1..N
and shows each load, the canary shows each model load and each prompt for the base and the
model, and the automatic salvage search reports each run as it ends."""

import pathlib

from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, DEMO_PROMPTS, DEMO_TEXT
from surgeon.prune.engine import prune
from surgeon.prune.options import PruneOptions
from surgeon.recover.canary.checks import CanaryOptions, read_prompts
from surgeon.recover.canary.runner import run_canary
from surgeon.recover.salvage import canary_search
from surgeon.runtime.settings import RunSettings

ON_CPU = RunSettings(device="cpu", dtype="float32")


class Recorder:
    """A ProgressSink that keeps (description, total, advanced) per bar."""

    def __init__(self):
        self.bars: list[list] = []

    def start(self, description: str, total: int, unit: str = "bytes") -> None:
        self.bars.append([description, total, 0])

    def advance(self, amount: int) -> None:
        self.bars[-1][2] += amount

    def stop(self) -> None:
        pass


def test_prune_counts_layers_from_one_and_shows_loading_and_every_phase_completes(tmp_path: pathlib.Path):
    sink = Recorder()
    options = PruneOptions(layers="0-1", calib=str(DEMO_TEXT), calib_tokens=512, run=ON_CPU)
    prune(DEMO_MODEL, tmp_path / "out", options, progress=sink)
    names = [bar[0] for bar in sink.bars]
    assert names[0] == "loading tokenizer, calibration text and model"
    assert "layer 1/8 load" in names and "layer 2/8 heal" in names and not any("layer 0/" in n for n in names)
    assert "layer 1/8 importance" in names
    unfinished = [bar for bar in sink.bars if bar[0] != "writing" and bar[2] != bar[1]]
    assert unfinished == [], unfinished  # the importance bar used to stay at 0/1


def test_the_canary_shows_each_load_and_each_prompt_for_base_and_model(tmp_path: pathlib.Path):
    sink = Recorder()
    prompts = read_prompts(DEMO_PROMPTS)
    run_canary(
        str(DEMO_CANDIDATE),
        str(DEMO_MODEL),
        prompts,
        CanaryOptions(),
        run=ON_CPU,
        cache_dir=tmp_path / "cache",
        progress=sink,
    )
    names = [bar[0] for bar in sink.bars]
    assert names == ["base: loading", "base: generating", "base", "model: loading", "model"]
    assert [bar[1] for bar in sink.bars][1:] == [len(prompts)] * 2 + [1, len(prompts)]
    assert all(bar[2] == bar[1] for bar in sink.bars)


def test_the_automatic_search_reports_each_run_as_it_ends_with_the_most_runs_left():
    heard = []
    plan = canary_search([0, 1, 2, 3], lambda layers: 2 not in layers, on_step=lambda step, left: heard.append(left))
    assert plan.keep == [0, 1, 3]
    assert len(heard) == len(plan.steps) and heard == sorted(heard, reverse=True) and heard[-1] >= 0


def test_verify_shows_the_bytes_it_hashes():
    from surgeon.recover.verify import verify

    sink = Recorder()
    report = verify(DEMO_CANDIDATE, DEMO_MODEL, progress=sink)
    assert report.ok
    hashing = [bar for bar in sink.bars if bar[0] == "hashing"]
    assert hashing and hashing[0][1] > 0 and hashing[0][2] == hashing[0][1]
