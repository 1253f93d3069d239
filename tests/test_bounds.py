"""Bounded resources: layer numbers, layer options, side files and headers from untrusted
folders cost memory and time in proportion to their bytes, never to the numbers they hold.

Each heavy call runs under `bounded()`: tracemalloc's peak must stay under a limit, and an
address-space ceiling makes a regression fail with MemoryError instead of taking the
machine's memory (before these fixes, one tensor named `model.layers.1000000000.x` made
`diff --json` build a set of a billion ints).
"""

from __future__ import annotations

import json
import os
import re
import resource
import struct
import sys
import threading
import tracemalloc
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.inspection import inspect_json
from surgeon.diff.report import to_json
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.safetensors import TensorBytes, read_header, write_safetensors
from surgeon.model.names import parse_layer_spec, parse_layers, parse_name
from surgeon.recover.plan import RollbackPlan
from surgeon.recover.salvage import parse_keep, salvage
from tests.helpers import BASE, PRUNED

MB = 1 << 20


@contextmanager
def bounded(limit: int = 200 * MB, headroom: int = 2 << 30):
    """Fail if the block's traced peak passes `limit`; cap the address space at its current
    size + `headroom` meanwhile, so that a runaway allocation is a MemoryError, not swap."""
    ceiling = _address_space() + headroom if sys.platform == "linux" else None
    old = resource.getrlimit(resource.RLIMIT_AS)
    if ceiling is not None and (old[1] == resource.RLIM_INFINITY or ceiling < old[1]):
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, old[1]))
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_AS, old)
    assert peak < limit, f"peak {peak / MB:.0f} MB"


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def f32(name: str, values) -> TensorBytes:
    data = np.asarray(values, dtype="<f4")
    return TensorBytes(name, "F32", data.shape, data.tobytes())


SPARSE = "model.layers.999999999.mlp.down_proj.weight"  # 9 digits: a layer, far from the others
NOT_LAYERS = ("model.layers.1000000000.x", "model.layers.\u0663.x", "model.layers.07.x")  # 10 digits, Arabic 3, 0-led


def sparse_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A base and a candidate that differ in layer 0, the sparse layer and every odd name."""
    folders = []
    for scale in (1.0, 2.0):
        folder = tmp_path / ("base" if scale == 1.0 else "candidate")
        folder.mkdir()
        tensors = [f32("model.embed_tokens.weight", [1.0, 2.0])]
        tensors += [f32(f"model.layers.{i}.mlp.down_proj.weight", [i, scale * (i == 0)]) for i in range(3)]
        tensors += [f32(name, [scale, 3.0]) for name in (SPARSE, *NOT_LAYERS)]
        write_safetensors(folder / "model.safetensors", tensors)
        folders.append(folder)
    return folders[0], folders[1]


def test_layer_indices_are_short_ascii_numbers():
    assert parse_name(SPARSE).layer == 999999999
    for name in NOT_LAYERS:
        parsed = parse_name(name)
        assert (parsed.stack, parsed.layer, parsed.family) == (None, None, name)  # the whole name is its family
    assert parse_name("model.layers.0.x").layer == 0
    assert parse_name("model.layers.3.x\n").family == "x\n"  # the name is kept whole


def test_sparse_layer_numbers_allocate_nothing_per_number(tmp_path):
    base, candidate = sparse_pair(tmp_path)
    with bounded():
        report = diff_checkpoints(open_checkpoint(base), open_checkpoint(candidate), DiffOptions(cache_dir=None))
        data = to_json(report)
        plan = RollbackPlan(report)
        from surgeon.tui.views import layer_rows

        rows = layer_rows(report, plan)
        inspected = inspect_json(open_checkpoint(candidate))
    summary = data["summary"]
    assert summary["num_layers"] == 4  # 0, 1, 2 and 999999999: a count, not max + 1
    assert summary["layers_changed"] == [0, 999999999] and summary["layers_unchanged"] == [1, 2]
    assert plan.layers == [0, 1, 2, 999999999] and [row.layer for row in rows] == plan.layers
    assert sorted(t["name"] for t in data["tensors"] if t["layer"] is None and t["status"] == "changed") == sorted(
        NOT_LAYERS
    )
    assert any(999999999 in row["layers"] for row in inspected["families"])


def test_plan_ranges_check_the_layers_that_exist(tmp_path):
    base, candidate = sparse_pair(tmp_path)
    plan = RollbackPlan(diff_checkpoints(open_checkpoint(base), open_checkpoint(candidate), DiffOptions()))
    with bounded():
        with pytest.raises(SurgeonError, match=r"layer 3 does not exist \(0-2, 999999999\)"):
            plan.keep_only("0-999999999")  # a billion-wide range is checked, not built
        plan.keep_only("999999999")
    assert plan.keep == [999999999]


def test_cli_diff_inspect_and_verify_on_sparse_layers(tmp_path):
    base, candidate = sparse_pair(tmp_path)
    runner = CliRunner()
    with bounded():
        diff = runner.invoke(main, ["diff", str(base), str(candidate), "--json"])
        inspected = runner.invoke(main, ["inspect", str(candidate)])
        _, manifest = salvage(candidate, base, [0, 999999999], tmp_path / "out")
        from surgeon.recover.verify import verify

        report = verify(tmp_path / "out", base)
    assert diff.exit_code == 1 and json.loads(diff.stdout)["summary"]["layers_changed"] == [0, 999999999]
    assert inspected.exit_code == 0, inspected.output
    assert manifest["salvage"]["kept_layers"] == [0, 999999999]
    assert manifest["written"]["layers"] == [0, 999999999]
    assert not any("999999999" in line and "identical" in line for line in report.discrepancies)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-300000000", "--keep '0-300000000': layer 8 does not exist (0-7)"),
        ("0-3,9", "--keep '0-3,9': layer 9 does not exist (0-7)"),
        ("", "--keep is empty: use 'all', 'none' or ranges like 0-3,7"),
        ("3-1", "--keep '3-1': use 'all', 'none' or ranges like 0-3,7"),
        ("\u0663", "use 'all', 'none' or ranges"),  # int() would read an Arabic 3 as 3
        ("1" * 5000, "beyond the model's 8 layers (0-7)"),  # past int()'s 4300 digits: still one line
    ],
)
def test_keep_is_checked_against_the_model(tmp_path, spec, message):
    out = tmp_path / "out"
    with bounded():
        result = CliRunner().invoke(main, ["salvage", str(PRUNED), "--base", str(BASE), "--keep", spec, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_keep_all_is_every_changed_layer_and_none_is_none(tmp_path):
    runner = CliRunner()
    with bounded():  # "all" was range(2**30) once
        every = runner.invoke(
            main, ["salvage", str(PRUNED), "--base", str(BASE), "--keep", "all", "-o", str(tmp_path / "a")]
        )
    assert every.exit_code == 0, every.output
    manifest = json.loads((tmp_path / "a" / "prune_manifest.json").read_text())
    assert manifest["salvage"]["kept_layers"] == [0, 1, 2, 3]  # the layers the prune changed, not 0-7
    nothing = runner.invoke(
        main, ["salvage", str(PRUNED), "--base", str(BASE), "--keep", "none", "-o", str(tmp_path / "n")]
    )
    assert nothing.exit_code == 0, nothing.output
    manifest = json.loads((tmp_path / "n" / "prune_manifest.json").read_text())
    assert manifest["salvage"]["kept_layers"] == [] and manifest["written"]["layers"] == []


def test_engine_messages_name_no_option(tmp_path):
    with pytest.raises(SurgeonError) as info:
        salvage(PRUNED, BASE, [0, 9], tmp_path / "out")
    assert "layer 9 does not exist (0-7)" in str(info.value) and "--" not in str(info.value)
    with bounded(), pytest.raises(SurgeonError) as info:
        salvage(PRUNED, BASE, parse_keep("0-300000000"), tmp_path / "out")
    assert "layer 8 does not exist (0-7)" in str(info.value) and "--" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_layer_ranges_are_checked_before_they_are_built():
    with bounded(limit=5 * MB):
        for existing in (8, [0, 1, 2, 999999999]):
            with pytest.raises(SurgeonError, match="does not exist"):
                parse_layers("0-999999999", existing, what="--layers")
        assert parse_layers("999999999,0-1", [0, 1, 2, 999999999]) == [0, 1, 999999999]
        assert parse_layer_spec("none", "--keep", allow_none=True).resolve(8) == []
    with pytest.raises(SurgeonError, match=r"^layers is empty"):
        parse_layers(" ", 8)  # the engine's default name is no option


def test_a_range_past_the_models_layers_says_so_however_many_digits(tmp_path):
    """`eval --layers 0-999999999999` said "use 'all' or ranges like 0-3,7", as if the text
    were malformed: a number of more than 9 digits is a layer past any model's."""
    from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL

    args = ["eval", DEMO_CANDIDATE, "--base", DEMO_MODEL, "--device", "cpu", "--max-tokens", "64"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--layers", "0-999999999999"]])
    assert result.exit_code == 2, result.output
    expected = "--layers '0-999999999999': layer 8 does not exist (0-7), beyond the model's 8 layers"
    assert result.stderr == f"surgeon: error: {expected}\n"
    with bounded():
        for spec, words in [("12-99999999999999", "layer 12 does not exist (0-7), beyond"), ("9" * 20, "beyond")]:
            with pytest.raises(SurgeonError, match="^" + re.escape(f"layers '{spec}': {words}")):
                parse_layers(spec, 8)
        with pytest.raises(SurgeonError, match=r"beyond the model's 4 layers \(0-2, 999999999\)$"):
            parse_layers("1000000000", [0, 1, 2, 999999999])
        with pytest.raises(SurgeonError, match=r"layer 3 does not exist \(0-2, 999999999\)$"):
            parse_layers("0-99999999999", [0, 1, 2, 999999999])  # a gap, not the end: no "beyond"


def test_cli_prune_names_its_own_options(tmp_path):
    import surgeon.prune.engine  # noqa: F401 - torch is imported here, outside the measured block

    runner = CliRunner()
    for args, message in [
        (["--layers", "0-300000000"], "--layers '0-300000000': layer 8 does not exist (0-7)"),
        (["--layer-frac", "9=0.5"], "--layer-frac 9=0.5: layer 9 does not exist (0-7)"),
        (["--layer-frac", "\u0663=0.5"], "--layer-frac"),
    ]:
        with bounded():
            result = runner.invoke(main, ["prune", str(BASE), "-o", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and message in result.stderr, result.output


def nested(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


def shard_beside(side_file: str) -> str:
    """A weight file that leaves `side_file` to be read: an index is read only where there is
    no model.safetensors (transformers loads that first, and so does surgeon)."""
    return "model-00001-of-00001.safetensors" if "index" in side_file else "model.safetensors"


def header_file(path: Path, body: bytes) -> Path:
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    return path


@pytest.mark.parametrize("where", ["header", "index", "config"])
def test_deep_nesting_is_not_valid_json(tmp_path, where):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    if where == "header":
        header_file(folder / "model.safetensors", nested(100_000))
    else:
        write_safetensors(folder / shard_beside(where), [f32("w", [1.0])])
        name = "config.json" if where == "config" else "model.safetensors.index.json"
        (folder / name).write_bytes(nested(100_000))
    with pytest.raises(SurgeonError, match="not valid JSON"):
        open_checkpoint(folder)


def finishes(func, seconds: float = 20.0):
    """func()'s exception or result, failing if it blocks (a reader stuck on a FIFO)."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_call(func)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked"
    return outcome[0]


def _call(func):
    try:
        return func()
    except Exception as exc:  # handed back to the test to check
        return exc


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json", "model.safetensors"])
def test_a_fifo_in_the_folder_is_refused_without_waiting(tmp_path, name):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    if name != "model.safetensors":
        write_safetensors(folder / shard_beside(name), [f32("w", [1.0])])
    os.mkfifo(folder / name)
    try:
        outcome = finishes(lambda: open_checkpoint(folder))
    finally:
        with suppress(OSError):  # unblock a reader that did wait, so no thread is left hanging
            os.close(os.open(folder / name, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(outcome, SurgeonError) and "not a regular file" in str(outcome)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json", "model.safetensors"])
def test_a_link_to_dev_zero_is_refused_without_reading_it(tmp_path, name):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    if name != "model.safetensors":
        write_safetensors(folder / shard_beside(name), [f32("w", [1.0])])
    (folder / name).symlink_to("/dev/zero")
    with bounded(limit=20 * MB):
        outcome = finishes(lambda: open_checkpoint(folder))
    assert isinstance(outcome, SurgeonError) and "not a regular file" in str(outcome)


def test_an_oversized_side_file_is_refused_before_it_is_read(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", [f32("w", [1.0])])
    with open(folder / "config.json", "wb") as handle:
        handle.truncate(300 * MB)  # sparse: no disk used, but more than any config may be
    with bounded(limit=20 * MB), pytest.raises(SurgeonError, match=r"more than the \d+ allowed"):
        open_checkpoint(folder)


def big_header(path: Path, count: int) -> int:
    """A shard of `count` one-element tensors with MoE-like names; returns the header size."""
    names = (f"model.layers.{i // 16}.mlp.experts.{i % 16}.down_proj.weight" for i in range(count))
    write_safetensors(path, [TensorBytes(n, "BF16", (1,), b"\0\0") for n in names])
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_a_big_header_costs_a_few_times_its_size(tmp_path):
    """Measured (200k tensors, 22.6 MB header): 9.6x the header before, 3.5x now; 50k
    here keeps the test to seconds and gives the same ratio."""
    size = big_header(tmp_path / "big.safetensors", 50_000)
    tracemalloc.start()
    try:
        shard = read_header(tmp_path / "big.safetensors")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(shard.tensors) == 50_000
    assert peak < 5 * size, f"peak {peak / size:.1f}x the header"


def test_a_huge_shape_costs_no_big_int_products(tmp_path):
    """A thousand 4000-digit dims would take hours to multiply out; the size check stops
    as soon as the product passes anything a file can hold."""
    shape = ",".join(["9" * 4000] * 1000)
    body = f'{{"w": {{"dtype": "F32", "shape": [{shape}], "data_offsets": [0, 4]}}}}'.encode()
    path = header_file(tmp_path / "w.safetensors", body)
    with open(path, "ab") as handle:
        handle.write(b"\0" * 4)
    outcome = finishes(lambda: read_header(path), seconds=10)
    assert isinstance(outcome, SurgeonError) and "needs more than any file holds" in str(outcome)


def test_prompts_corpus_and_canary_cache_are_bounded_regular_files(tmp_path):
    """A FIFO or a link to /dev/zero named as prompts or corpus is one line, not a hang or
    an endless read; a canary cache entry that is not a base output is a miss."""
    from surgeon.recover.canary.checks import cache_read, read_prompts
    from surgeon.runtime.corpus import load_corpus

    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "corpus.jsonl"
    zero.symlink_to("/dev/zero")
    for call, path in ((read_prompts, fifo), (load_corpus, fifo), (read_prompts, zero), (load_corpus, zero)):
        with pytest.raises(SurgeonError, match="not a regular file"):
            call(path)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    for call in (read_prompts, load_corpus):
        with pytest.raises(SurgeonError, match="not valid JSON"):
            call(deep)
    cache = tmp_path / "canary-cache"
    cache.mkdir()
    entries = {
        "fifo": None,
        "list": "[1, 2]",
        "bad-tokens": '{"tokens": ["a"], "nll": 1.0}',
        "bool-nll": '{"tokens": [1], "nll": true}',
        "nan-nll": '{"tokens": [1], "nll": NaN}',
        "deep": "[" * 100_000 + "]" * 100_000,
        "good": '{"tokens": [1, 2], "nll": 0.5}',
    }
    for key, text in entries.items():
        if text is None:
            os.mkfifo(cache / f"{key}.json")
        else:
            (cache / f"{key}.json").write_text(text)
    assert [k for k in entries if cache_read(cache, k) is not None] == ["good"]
