"""Every error is one line that names its cause: bad config values, canary prompts and
devices, and engine messages that read the same in the CLI and the TUI.

Each case goes through the command line (`surgeon prune`, `canary`, `diff`, `inspect`) on a
copy of the trained tiny fixture with one thing broken, and checks the contract: exit 2,
one line, the key or value named, no traceback and no "internal error".
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL
from tests.helpers import FIXTURES, ROOT

TRAINED = DEMO_MODEL
SURGEON = ROOT / "surgeon"


def broken_copy(tmp_path: Path, edit: dict, name: str = "model", src: Path = TRAINED) -> Path:
    """A fixture (the trained one by default) with config.json keys set (or removed, for
    the value ...)."""
    folder = tmp_path / name
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in edit.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *expected: str) -> str:
    """The contract for trouble: exit 2, a single line, each `expected` in it."""
    output = result.output.strip()
    assert result.exit_code == 2, output
    assert len(output.splitlines()) == 1, output
    assert "Traceback" not in output and "internal error" not in output, output
    for text in expected:
        assert text in output, output
    return output


def prune_args(model: Path, tmp_path: Path) -> list:
    return ["prune", model, "-o", tmp_path / "out", "--device", "cpu", "--layers", "0", "--calib-samples", "2", "-q"]


# -- bad config values ------------------------------------------------------------------

BAD_CONFIGS = [
    ({"num_attention_heads": "8"}, "config.json: num_attention_heads must be a positive integer (got '8')"),
    ({"num_attention_heads": None}, "config.json: num_attention_heads must be a positive integer (got null)"),
    ({"num_attention_heads": [8]}, "config.json: num_attention_heads must be a positive integer (got [8])"),
    ({"num_attention_heads": 8.0}, "config.json: num_attention_heads must be a positive integer (got 8.0)"),
    ({"num_attention_heads": True}, "config.json: num_attention_heads must be a positive integer (got true)"),
    ({"head_dim": -1}, "config.json: head_dim must be a positive integer (got -1)"),
    ({"hidden_size": "64"}, "config.json: hidden_size must be a positive integer (got '64')"),
    ({"num_hidden_layers": 8.5}, "config.json: num_hidden_layers must be a positive integer (got 8.5)"),
    ({"num_key_value_heads": 0}, "config.json: num_key_value_heads must be a positive integer (got 0)"),
    ({"text_config": "gemma"}, "config.json: text_config must be an object (got 'gemma')"),
    ({"model_type": ["gemma4_text"]}, "config.json: model_type must be a string (got ['gemma4_text'])"),
    ({"layer_types": "sliding_attention"}, "config.json: layer_types must be a list of strings"),
    ({"per_layer_config": []}, "config.json: per_layer_config must be an object (got [])"),
    ({"per_layer_config": {"5": {"head_dim": "16"}}}, "config.json: per_layer_config.5.head_dim must be a positive"),
    ({"final_logit_softcapping": "30"}, "config.json: final_logit_softcapping must be a positive number"),
    ({"sliding_window": -4}, "config.json: sliding_window must be a positive integer (got -4)"),
    # Keys surgeon does not read itself: transformers' own check, still one line with the key.
    ({"vocab_size": "512"}, "config.json: vocab_size is not valid"),
    ({"rms_norm_eps": [1e-6]}, "config.json: rms_norm_eps is not valid"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_CONFIGS, ids=[next(iter(e)) + "-" + repr(v) for e, v in BAD_CONFIGS])
def test_prune_names_the_bad_config_key(tmp_path, edit, message):
    model = broken_copy(tmp_path, edit)
    one_line_error(run(prune_args(model, tmp_path)), message)
    assert not (tmp_path / "out").exists()


def test_a_bad_value_inside_text_config_is_named_with_its_path(tmp_path):
    from tests.tiny_models import as_multimodal_gemma4

    multimodal = as_multimodal_gemma4(TRAINED, tmp_path / "mm")
    config = json.loads((multimodal / "config.json").read_text())
    config["text_config"]["num_attention_heads"] = "8"
    (multimodal / "config.json").write_text(json.dumps(config))
    one_line_error(run(prune_args(multimodal, tmp_path)), "text_config.num_attention_heads must be a positive integer")


def test_num_hidden_layers_must_cover_the_checkpoints_layers(tmp_path):
    one_line_error(
        run(prune_args(broken_copy(tmp_path, {"num_hidden_layers": 4}), tmp_path)),
        "config.json: num_hidden_layers is 4 but the checkpoint has layers 0-7",
    )
    one_line_error(
        run(prune_args(broken_copy(tmp_path, {"num_hidden_layers": ...}, "none"), tmp_path)),
        "config.json: num_hidden_layers is missing",
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"num_attention_heads": "8"}, "config.json: num_attention_heads must be a positive integer (got '8')"),
        ({"text_config": "gemma"}, "config.json: text_config must be an object"),
        ({"head_dim": -1}, "config.json: head_dim must be a positive integer (got -1)"),
        ({"intermediate_size": None}, "config.json: intermediate_size is not valid"),
    ],
)
def test_canary_names_the_bad_config_key(tmp_path, edit, message):
    model = broken_copy(tmp_path, edit)
    args = ["canary", model, "--base", TRAINED, "--device", "cpu", "--max-new-tokens", "2", "--no-cache"]
    one_line_error(run(args), message)
    # A broken base is found as early, before any model is loaded.
    one_line_error(run(["canary", TRAINED, "--base", model, "--device", "cpu", "--no-cache"]), message)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"num_attention_heads": 16},
            "layers.0.self_attn.q_proj.weight is [64, 64] in the checkpoint but [128, 64] by",
        ),
        (
            {"per_layer_config": {"5": {"head_dim": 8}}},
            "layers.5.self_attn.q_proj.weight is [128, 64] in the checkpoint",
        ),
        ({"hidden_size": 128}, "is [64] in the checkpoint but [128] by the config"),
    ],
)
def test_a_config_that_does_not_fit_the_weights_is_one_line(tmp_path, edit, message):
    """Values of the right type that describe another model: the tensor and both sizes."""
    model = broken_copy(tmp_path, edit)
    one_line_error(run(prune_args(model, tmp_path)), "config.json: does not fit the weights: ", message)
    canary = ["canary", model, "--base", TRAINED, "--device", "cpu", "--max-new-tokens", "2", "--no-cache"]
    one_line_error(run(canary), "config.json: does not fit the weights")


BAD_FOR_LABELS = [
    {"num_attention_heads": "8", "head_dim": ...},
    {"hidden_size": "64", "head_dim": ...},
    {"num_attention_heads": None},
    {"text_config": "gemma"},
    {"per_layer_config": {"5": "x", "7": {"head_dim": [16]}}},
    {"per_layer_config": {"9" * 5000: {"head_dim": 16}}},
    {"layer_types": "full_attention"},
    {"layer_types": [["sliding_attention"]] * 8},
    {"model_type": ["gemma4_text"], "architectures": "Gemma"},
]


@pytest.mark.parametrize("edit", BAD_FOR_LABELS, ids=range(len(BAD_FOR_LABELS)))
def test_diff_and_inspect_still_work_with_a_bad_config(tmp_path, edit):
    """diff and inspect only label heads with the config: a bad value reads as absent and
    the tensor shapes decide, so the comparison goes on, heads and all."""

    other = broken_copy(tmp_path, edit, src=DEMO_CANDIDATE)  # one head pruned in every layer
    for args in (
        ["diff", TRAINED, other, "--no-cache"],
        ["diff", TRAINED, other, "--markdown", "--no-cache"],
        ["inspect", other],
        ["inspect", other, "--json"],
    ):
        result = run(args)
        assert result.exit_code in (0, 1) and "surgeon: error" not in result.output, (args, result.output)
    result = run(["diff", TRAINED, other, "--json", "--no-cache"])
    assert result.exit_code == 1, result.output
    q_proj = next(t for t in json.loads(result.output)["tensors"] if t["name"].endswith("0.self_attn.q_proj.weight"))
    assert (q_proj["heads"]["num_heads"], q_proj["heads"]["head_dim"]) == (8, 8)
    assert len(q_proj["heads"]["zeroed"]) == 1


# -- canary prompts and devices ---------------------------------------------------------


def test_chat_prompts_need_a_chat_template(tmp_path):
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    result = run(["canary", TRAINED, "--base", TRAINED, "--prompts", prompts, "--device", "cpu", "--no-cache"])
    one_line_error(result, "has no chat template; give plain prompts")


@pytest.mark.parametrize(
    "messages", [[], ["hi"], [{"content": "Hi"}], [{"role": "user", "content": 3}], {"role": "user"}]
)
def test_malformed_chat_messages_are_one_line(tmp_path, messages):
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text('{"prompt": "fine"}\n' + json.dumps({"messages": messages}) + "\n")
    result = run(["canary", TRAINED, "--base", TRAINED, "--prompts", prompts, "--device", "cpu", "--no-cache"])
    one_line_error(result, 'chat.jsonl:2: "messages" must be a list of')


def test_a_failing_chat_template_is_one_line(tmp_path):
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(TRAINED / name, tokenizer)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('only user turns') }}"
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief"}]}) + "\n")
    args = ["canary", TRAINED, "--base", TRAINED, "--prompts", prompts, "--tokenizer", tokenizer, "--device", "cpu"]
    one_line_error(run([*args, "--no-cache"]), "the chat template failed on", "only user turns")


BAD_DEVICES = [
    ("bogus", "device 'bogus': not a device torch knows (cpu, cuda, cuda:0, mps, auto)"),
    ("cuda:x", "device 'cuda:x': not a device torch knows"),
    ("", "device '': not a device torch knows"),
    ("meta", "device 'meta': not a device surgeon can compute on"),
]


@pytest.mark.parametrize(("device", "message"), BAD_DEVICES)
def test_a_bad_device_is_one_line(tmp_path, device, message):
    canary = ["canary", TRAINED, "--base", TRAINED, "--device", device, "--no-cache"]
    one_line_error(run(canary), message)
    one_line_error(run(["prune", TRAINED, "-o", tmp_path / "out", "--device", device, "-q"]), message)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path):
    one_line_error(run(["canary", TRAINED, "--base", TRAINED, "--device", "cuda:0"]), "CUDA is not available")


def test_a_bad_dtype_is_one_line(tmp_path):
    message = "dtype 'float8': use auto, float32, bfloat16 or float16"
    one_line_error(run(["canary", TRAINED, "--base", TRAINED, "--device", "cpu", "--dtype", "float8"]), message)
    one_line_error(run(["prune", TRAINED, "-o", tmp_path / "out", "--device", "cpu", "--dtype", "float8"]), message)


# -- engine messages --------------------------------------------------------------------

ENGINE = [
    "model/geometry",
    "model/families",
    "runtime/corpus",
    "runtime/tokenizer",
    "runtime/device",
    "recover/canary/checks",
    "recover/canary/runner",
    "quality/evaluate",
    "prune/heal",
    "prune/importance",
    "runtime/memory",
    "runtime/stream",
]


def _message_texts(tree: ast.AST):
    """The literal text of every SurgeonError(...) raised or built in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("SurgeonError", "tokenizer_error"):
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.value


@pytest.mark.parametrize("module", ENGINE)
def test_engine_messages_name_no_cli_flag(module):
    """The TUI shows engine messages as they are, so they name things (a device, a folder,
    a config key), never an option such as --tokenizer; the CLI adds the option."""
    tree = ast.parse((SURGEON / f"{module}.py").read_text())
    texts = list(_message_texts(tree))
    assert texts or module in ("quality/evaluate", "prune/heal", "prune/importance", "runtime/memory")
    assert [t for t in texts if "--" in t] == []


def test_the_cli_adds_the_option_an_engine_message_leaves_out(tmp_path):
    from surgeon.errors import SurgeonError
    from surgeon.runtime.tokenizer import load_tokenizer

    bare = tmp_path / "weights-only"
    bare.mkdir()
    with pytest.raises(SurgeonError) as caught:
        load_tokenizer(bare)
    assert "--" not in str(caught.value) and "has no tokenizer files" in str(caught.value)
    result = run(["prune", FIXTURES / "gemma4-tiny" / "base", "-o", tmp_path / "out", "--device", "cpu", "-q"])
    one_line_error(result, "has no tokenizer files", "; pass --tokenizer")
