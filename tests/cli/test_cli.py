import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from tests.helpers import BASE, PRUNED, ROOT


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_exit_codes_follow_diff():
    assert invoke("diff", BASE, BASE, "--quiet").exit_code == 0
    assert invoke("diff", BASE, PRUNED, "--quiet").exit_code == 1
    assert invoke("diff", BASE, BASE / "nope").exit_code == 2


def test_quiet_is_the_exit_status_and_at_most_one_line():
    """Like diff -q: nothing when identical, the summary line when they differ."""
    same = invoke("diff", BASE, BASE, "-q")
    assert (same.exit_code, same.stdout) == (0, "")
    differ = invoke("diff", BASE, PRUNED, "-q")
    assert differ.exit_code == 1
    assert differ.stdout.splitlines() == [json.loads(invoke("diff", BASE, PRUNED, "--json").stdout)["summary"]["text"]]


@pytest.mark.parametrize("flag", [["--json"], ["--markdown"], ["-v"], ["-o", "report.txt"]])
def test_quiet_refuses_options_that_shape_a_report(flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("diff", BASE, PRUNED, "-q", *flag)
    assert result.exit_code == 2 and "--quiet prints no report" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "report.txt").exists()


def test_no_progress_keeps_the_report():
    result = invoke("diff", BASE, PRUNED, "--no-progress", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["summary"]["tensors"]["changed"] == 8


def test_json_schema():
    result = invoke("diff", BASE, PRUNED, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema"] == "surgeon.diff/1"
    assert data["summary"]["layers_changed"] == [0, 1, 2, 3]
    assert data["summary"]["tensors"]["changed"] == 8
    assert data["summary"]["shards"]["header-only"] == 1
    q0 = next(t for t in data["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert q0["status"] == "changed"
    assert len(q0["sha256"]) == 2 and q0["sha256"][0] != q0["sha256"][1]
    assert q0["heads"]["zeroed"] == [1] and q0["heads"]["head_dim"] == 8
    assert set(q0["stats"]) == {
        "max_abs_delta",
        "rel_frobenius",
        "cosine",
        "frac_changed",
        "elements_changed",
        "experts_changed",
    }
    assert q0["stats"]["experts_changed"] is None  # only fused experts tensors have it
    shard = {s["name"]: s for s in data["shards"]}["model-00002-of-00002.safetensors"]
    assert shard["status"] == "header-only"
    assert shard["header_differences"] == ["__metadata__.surgeon_build added"]


def test_markdown_has_the_two_model_card_sections():
    result = invoke("diff", BASE, PRUNED, "--markdown")
    text = result.stdout
    assert "## What's actually different from base" in text
    assert "## SHA256 evidence" in text
    assert "| `self_attn.q_proj.weight` | 0-3 | 4-7 (all 4) |" in text
    assert "| `self_attn.o_proj.weight` | 0-3 | 4-7 (all 4) |" in text
    assert "| `mlp.{down_proj, gate_proj, up_proj}.weight` | (none) | 0-7 (all 8) |" in text
    assert "Of the 112 tensors, 8 differ from the base model" in text
    assert "only the header differs (`__metadata__.surgeon_build` added)" in text  # a code span, not bold


def test_terminal_report_names_what_changed():
    text = invoke("diff", BASE, PRUNED).stdout
    assert text.splitlines()[0].startswith("8 of 112 tensors differ (8 changed) in layers 0-3")
    assert "header-only" in text and "zeroed 1" in text


def test_output_file_is_written_and_never_clobbered(tmp_path):
    out = tmp_path / "card.md"
    assert invoke("diff", BASE, PRUNED, "--markdown", "-o", out).exit_code == 1
    assert out.read_text().startswith("## What's actually different from base")
    out.write_text("keep me")
    result = invoke("diff", BASE, PRUNED, "--markdown", "-o", out)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_text() == "keep me"
    assert invoke("diff", BASE, PRUNED, "--markdown", "-o", out, "--force").exit_code == 1
    assert out.read_text().startswith("##")


def test_output_inside_an_input_checkpoint_is_refused(tmp_path):
    import shutil

    ckpt = shutil.copytree(BASE, tmp_path / "ckpt")
    result = invoke("diff", BASE, ckpt, "--json", "-o", ckpt / "diff.json")
    assert result.exit_code == 2
    assert "inside the input checkpoint" in result.stderr
    assert not (ckpt / "diff.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["diff", "/no/such/dir", str(BASE)], "no such checkpoint"),
        (["diff", str(BASE), str(PRUNED), "--json", "--markdown"], "exclusive"),
        (["inspect", "acme/not-cached"], "not in the local Hugging Face cache"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "surgeon.cli.main", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_shard_is_exit_2(tmp_path):
    import shutil

    ckpt = shutil.copytree(BASE, tmp_path / "ckpt")
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    result = invoke("diff", BASE, ckpt)
    assert result.exit_code == 2
    assert "model-00002-of-00002.safetensors" in result.stderr and "tensors cover" in result.stderr


def test_no_hash_reports_statuses_without_hashes():
    data = json.loads(invoke("diff", BASE, PRUNED, "--json", "--no-hash").stdout)
    assert data["hashed"] is False
    assert data["summary"]["layers_changed"] == [0, 1, 2, 3]
    assert all(t["sha256"] == [None, None] for t in data["tensors"])


def test_diff_and_inspect_do_not_import_torch():
    """Nor gguf-py (~100 ms): only a GGUF named on the command line brings it."""
    code = (
        "import sys\n"
        "from surgeon.cli.main import main\n"
        "for args in (['diff', '--help'], ['diff', sys.argv[1], sys.argv[2], '--json'],"
        " ['diff', sys.argv[1], sys.argv[2], '--markdown', '--no-hash'], ['inspect', sys.argv[1]]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'textual', 'gguf') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(BASE), str(PRUNED)], capture_output=True, text=True, cwd=ROOT
    )
    assert "HEAVY=\n" in proc.stderr, proc.stderr[-2000:]


def test_inspect_json():
    data = json.loads(invoke("inspect", BASE, "--json").stdout)
    assert data["schema"] == "surgeon.inspect/1"
    assert data["parameters"] == sum(__import__("math").prod(t["shape"]) for t in data["tensors"])
    full = [a for a in data["attention"] if a["layer_type"] == "full_attention"]
    assert [(a["layer"], a["head_dim"], a["num_kv_heads"]) for a in full] == [(5, 16, 2), (7, 16, 2)]
    families = {f["family"]: f for f in data["families"]}
    assert families["self_attn.q_proj.weight"]["layers"] == list(range(8))
    assert data["shards"][0]["metadata"] == {"format": "pt"}


def test_inspect_terminal():
    text = invoke("inspect", BASE).stdout
    assert "gemma4_text" in text and "342,248 parameters" in text
    assert "8 heads x 16, 2 kv heads (full_attention)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["diff", "--bogus", "a", "b"], "No such option '--bogus'"),
        (["diff"], "Missing argument 'BASE'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["salvage", "x", "--base", "y", "--keep", "0", "-o", __file__], "is a file"),
    ],
)
def test_clicks_own_errors_are_one_line(args, message):
    """An unknown option or a path of the wrong kind is bad input like any other: one line, exit 2."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("surgeon: error: ") and message in lines[0], result.stderr


def test_bare_surgeon_shows_the_help():
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2 and "Commands:" in result.stderr and "surgeon: error" not in result.stderr
