"""One run-settings record (issue 18): device, dtype, tokenizer and the weights' precision
live on RunSettings, nested in PruneOptions and EvalOptions and taken by the canary, not in
four keyword sets; the JSON that records them keeps its flat keys."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest

from surgeon.errors import SurgeonError
from surgeon.options import field_named, in_range, range_text, record
from surgeon.prune.options import PruneOptions
from surgeon.quality.options import EvalOptions
from surgeon.runtime.settings import RunSettings

RUN_KEYWORDS = {"device", "dtype", "quant", "tokenizer", "tokenizer_path"}
# The manifest's and the eval report's `options` as they were before the record (the docs'
# examples, docs/prune-manifest.md and docs/eval-json.md): the same keys, device, dtype and
# tokenizer flat among them.
PRUNE_OPTION_KEYS = [
    "prune_frac",
    "mode",  # issue 21: mask or reshape
    "layers",
    "layer_fracs",
    "importance",
    "ffn_frac",  # issue 22: MLP channels
    "ffn_importance",
    "ffn_ridge_rel",
    "importance_quant",
    "heal",
    "ridge_rel",
    "propagate",
    "calib",
    "calib_dataset",
    "calib_tokens",
    "max_tokens",
    "calib_samples",
    "batch_size",
    "device",
    "dtype",
    "tokenizer",
    "offload_activations",
]
EVAL_OPTION_KEYS = [
    "text",
    "text_format",
    "window",
    "per_document",
    "max_tokens",
    "batch_size",
    "device",
    "dtype",
    "tokenizer",
    "cache_budget_bytes",
]


def test_prune_and_eval_nest_one_record():
    assert PruneOptions().run == EvalOptions().run == RunSettings()
    assert RunSettings() == RunSettings(device="auto", dtype="auto", tokenizer=None, quant=None)
    for cls in (PruneOptions, EvalOptions):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"device", "dtype", "tokenizer"}, cls  # no second owner of a setting
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunSettings().device = "cpu"  # type: ignore[misc]


def test_the_canary_takes_the_record_not_keywords():
    from surgeon.recover.canary.runner import BaseOutputs, CanaryModel, ComposedCanary, run_canary

    for taker in (run_canary, ComposedCanary, CanaryModel, BaseOutputs):
        parameters = inspect.signature(taker).parameters
        assert not RUN_KEYWORDS & set(parameters), taker
        assert parameters["run"].annotation in (RunSettings, "RunSettings"), taker


def test_prune_and_eval_refuse_a_quantised_run():
    """RunSettings.quant is the canary's whole-model nf4; prune and eval stream the layers in
    their dtype (prune's nf4 is importance_quant, for loo-nll scores alone)."""
    for options in (PruneOptions(run=RunSettings(quant="nf4")), EvalOptions(run=RunSettings(quant="nf4"))):
        with pytest.raises(SurgeonError, match="dtype"):
            options.validate()
    PruneOptions(importance="loo-nll", importance_quant="nf4").validate()


def test_records_keep_the_flat_keys():
    run = RunSettings(device="cpu", dtype="fp32", tokenizer="/models/tok")
    assert list(record(PruneOptions(run=run))) == PRUNE_OPTION_KEYS
    assert list(record(EvalOptions(run=run))) == EVAL_OPTION_KEYS
    flat = record(EvalOptions(run=run))
    assert (flat["device"], flat["dtype"], flat["tokenizer"]) == ("cpu", "fp32", "/models/tok")
    plain = dataclasses.asdict(PruneOptions(run=run))  # the rest as asdict has it
    assert {k: v for k, v in record(PruneOptions(run=run)).items() if k in plain} == {
        k: v for k, v in plain.items() if k != "run"
    }


def test_the_prune_fraction_range_comes_from_the_field():
    fraction = field_named(PruneOptions, "prune_frac")
    assert range_text(fraction) == "[0, 1)"
    assert [in_range(fraction, f) for f in (0.0, 0.5, 1.0, -0.1, float("nan"))] == [True, True, False, False, False]
    with pytest.raises(SurgeonError, match=r"must be in \[0, 1\)"):
        PruneOptions(layer_fracs=((0, 1.0),)).validate()


def test_the_record_imports_no_torch():
    code = "import sys, surgeon.runtime.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
