"""`surgeon diff BASE QUANT` with QUANT a GGUF: a base against its own quants is within every
bound (exit 0); a quant of a pruned model differs in exactly the pruned layers' q and o
projections, the pruned head named, and nowhere else (exit 1), in both directions; a head
changed under the whole tensor's bound is still caught; split sets and folders read as one
file; hostile files are one line and exit 2. GGUFs are written from a tiny GQA Llama (8 query
heads of 8, 4 kv heads, q and k permuted as llama.cpp permutes them) by tests/gguf_fixtures.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from surgeon.cli.main import main
from surgeon.diff.quant import diff_quant
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.rows import SafetensorsRows
from surgeon.model.gguf_rows import GGUFRows
from tests.gguf_fixtures import convert_checkpoint, save_hf

HEAD_DIM = 8
ATTN = "model.layers.{}.self_attn.{}_proj.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_hf("llama", tmp_path_factory.mktemp("quant") / "base", seed=0)


def pruned_copy(base, out, head: int, layers=(0, 1), seed: int = 0, heal: float = 0.3):
    """BASE with head `head` removed in `layers` as surgeon's mask mode removes one (its q rows
    and o_proj input columns zeroed) and the other heads' o_proj columns "healed" (moved by
    about `heal` of their size, as a refit moves them)."""
    rng = np.random.default_rng(seed)
    tensors = load_file(base / "model.safetensors")
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    for layer in layers:
        q, o = tensors[ATTN.format(layer, "q")].copy(), tensors[ATTN.format(layer, "o")].copy()
        q[rows] = 0
        o += heal * o.std() * rng.standard_normal(o.shape).astype(np.float32)
        o[:, rows] = 0
        tensors[ATTN.format(layer, "q")], tensors[ATTN.format(layer, "o")] = q, o
    return write_folder(base, out, tensors)


def write_folder(base, out, tensors):
    out.mkdir()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(base / "config.json", out / "config.json")
    return out


def run_diff(*args, codes=(0, 1)) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["diff", *map(str, args), "--json"])
    assert result.exit_code in codes, result.output
    return result.exit_code, json.loads(result.stdout)


def verdicts(report: dict) -> dict[str, str]:
    return {t["name"]: t["quant"]["verdict"] for t in report["tensors"]}


@pytest.mark.parametrize("qtype", ["F32", "BF16", "Q8_0", "Q4_0", "MXFP4"])
def test_a_base_against_its_own_quant_is_within_every_bound(tmp_path, base, qtype):
    gguf = convert_checkpoint(base, tmp_path / f"m-{qtype}.gguf", "llama", qtype)
    code, report = run_diff(base, gguf)
    assert code == 0 and report["quant"]["made_from"] is True
    assert set(verdicts(report).values()) == {"within"} and len(report["tensors"]) == 29
    assert report["summary"]["layers_changed"] == [] and report["summary"]["layers_unchanged"] == [0, 1]
    assert report["quant"]["transforms"] == {"rotary-unpermute": 8}
    types = {qtype: 16, "F32": 13} if qtype != "F32" else {"F32": 29}
    assert report["quant"]["storage"] == types
    text = report["summary"]["text"]
    assert text.startswith("made from base: 29 of 29 tensors within their ") and text.endswith(" bounds")
    for t in report["tensors"]:
        assert t["quant"]["nmse"] <= t["quant"]["bound"] and t["quant"]["rows_compared"] == t["quant"]["rows"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_quant_of_a_pruned_model_differs_in_exactly_the_pruned_heads(tmp_path, base, seed):
    head = [1, 5, 6][seed]
    pruned = pruned_copy(base, tmp_path / "pruned", head, seed=seed)
    gguf = convert_checkpoint(pruned, tmp_path / "pruned.Q8_0.gguf", "llama", "Q8_0")
    code, report = run_diff(base, gguf)
    assert code == 1 and report["quant"]["made_from"] is False
    differing = {name for name, v in verdicts(report).items() if v != "within"}
    assert differing == {ATTN.format(layer, p) for layer in (0, 1) for p in "qo"}  # no false flag elsewhere
    assert report["summary"]["layers_changed"] == [0, 1]
    assert report["summary"]["text"].startswith("differs beyond quantization error in layers 0-1 (q_proj, o_proj)")
    by_name = {t["name"]: t["quant"] for t in report["tensors"]}
    for layer in (0, 1):
        q, o = by_name[ATTN.format(layer, "q")]["heads"], by_name[ATTN.format(layer, "o")]["heads"]
        assert q["beyond"] == [head] and q["nmse"][head] == pytest.approx(1.0)
        assert o["nmse"][head] == pytest.approx(1.0) and head in o["beyond"]
        healed = [v for h, v in enumerate(o["nmse"]) if h != head]
        assert all(0.03 < v < 0.3 for v in healed)  # healed columns: moved far past Q8_0's error
    beyond = {(b["layer"], b["projection"]): b["heads"] for b in report["quant"]["heads_beyond"]}
    assert beyond[(0, "q_proj")] == [head] and beyond[(1, "q_proj")] == [head]


def test_a_pruned_base_against_a_quant_of_the_full_model(tmp_path, base):
    """The other direction: BASE's head is zero and the quant's is not; its NMSE is undefined
    (nothing to divide by), shown as such and counted as a difference."""
    pruned = pruned_copy(base, tmp_path / "pruned", head=3, heal=0.0)
    gguf = convert_checkpoint(base, tmp_path / "full.Q8_0.gguf", "llama", "Q8_0")
    code, report = run_diff(pruned, gguf)
    assert code == 1
    differing = {name for name, v in verdicts(report).items() if v != "within"}
    assert differing == {ATTN.format(layer, p) for layer in (0, 1) for p in "qo"}
    q = next(t["quant"] for t in report["tensors"] if t["name"] == ATTN.format(0, "q"))
    assert q["heads"]["beyond"] == [3] and q["heads"]["nmse"][3] is None
    assert all(v is not None and v < 4e-4 for h, v in enumerate(q["heads"]["nmse"]) if h != 3)


def test_a_head_changed_under_the_whole_tensors_bound_is_caught(tmp_path, base):
    """One head of eight moved by 2.5%: its own NMSE (6e-4) is past Q8_0's row bound (4e-4),
    the tensor's (under 1.5e-4 with the quantization error) is not."""
    tensors = load_file(base / "model.safetensors")
    name = ATTN.format(1, "q")
    q = tensors[name].copy()
    rng = np.random.default_rng(7)
    q[2 * HEAD_DIM : 3 * HEAD_DIM] *= 1 + 0.025 * rng.choice([-1, 1], size=q[:HEAD_DIM].shape).astype(np.float32)
    tensors[name] = q
    changed = write_folder(base, tmp_path / "changed", tensors)
    gguf = convert_checkpoint(changed, tmp_path / "c.gguf", "llama", "Q8_0")
    code, report = run_diff(base, gguf)
    t = next(t["quant"] for t in report["tensors"] if t["name"] == name)
    assert code == 1 and t["verdict"] == "differs" and t["nmse"] < t["bound"]
    assert t["heads"]["beyond"] == [2] and "head 2 beyond" in t["note"]
    assert {n for n, v in verdicts(report).items() if v != "within"} == {name}


def test_a_split_set_reads_as_one_file_by_its_first_part_or_its_folder(tmp_path, base):
    folder = tmp_path / "split"
    folder.mkdir()
    convert_checkpoint(base, folder / "m.gguf", "llama", "Q4_0", split_max_tensors=10)
    parts = sorted(p.name for p in folder.glob("*.gguf"))
    assert parts == ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
    for quant in (folder / parts[0], folder):
        code, report = run_diff(base, quant)
        assert code == 0 and report["other"]["shards"] == 3 and len(report["quant"]["files"]) == 3


def test_rows_through_the_seam_match_by_any_span(tmp_path, base):
    """read_rows of any span equals the same rows from iter_rows, on both readers, for a
    permuted tensor whose spans cross heads."""
    gguf = convert_checkpoint(base, tmp_path / "m.gguf", "llama", "Q8_0")
    ckpt = open_checkpoint(base)
    report_cross = diff_quant(ckpt, str(gguf))
    assert report_cross.made_from
    from surgeon.format.gguf import open_gguf
    from surgeon.model.crossnames import build_crossmap

    model = open_gguf(gguf)
    shapes = {n: tuple(i.shape) for n, i in ckpt.tensors.items()}
    readers = [GGUFRows(model, build_crossmap(shapes, model), shapes), SafetensorsRows(ckpt)]
    name = ATTN.format(0, "k")
    for reader in readers:
        whole = np.concatenate([rows for _, rows in reader.iter_rows(name, multiple=8, budget=64 * 8)])
        assert whole.shape == (32, 64)
        for start, stop in [(0, 32), (3, 13), (7, 8), (16, 16)]:
            np.testing.assert_array_equal(reader.read_rows(name, start, stop), whole[start:stop])


def rendered(report, width: int) -> str:
    import io

    from rich.console import Console

    from surgeon.diff.render_quant import render_quant_terminal

    buffer = io.StringIO()
    render_quant_terminal(report, Console(file=buffer, width=width, highlight=False))
    return buffer.getvalue()


def test_the_terminal_report_fits_80_columns_and_cuts_no_name(tmp_path, base):
    pruned = pruned_copy(base, tmp_path / "pruned", head=4)
    gguf = convert_checkpoint(pruned, tmp_path / "p.gguf", "llama", "Q8_0")
    report = diff_quant(open_checkpoint(base), str(gguf))
    text = rendered(report, 80)
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    block = text.split("Tensors beyond their bounds", 1)[1]
    names = "".join(line.split("│")[1].strip() for line in block.splitlines() if line.startswith("│"))
    assert names == "".join(ATTN.format(layer, p) for layer in (0, 1) for p in "oq")
    assert "4 (1)" in block  # the removed head first, with its NMSE
    summary = " ".join(text.split("\nbase:", 1)[0].split())  # wrapped at 80 columns
    assert summary == "differs beyond quantization error in layers 0-1 (q_proj, o_proj): 4 of 29 tensors"


def test_the_quant_diff_imports_no_torch(tmp_path, base):
    import subprocess
    import sys

    from tests.helpers import ROOT

    gguf = convert_checkpoint(base, tmp_path / "m.gguf", "llama", "Q8_0")
    code = (
        "import sys\n"
        "from surgeon.cli.main import main\n"
        "try:\n"
        "    main(['diff', sys.argv[1], sys.argv[2], '--json'])\n"
        "except SystemExit as exc:\n"
        "    sys.stderr.write(f'EXIT={exc.code}\\n')\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'textual') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(base), str(gguf)], capture_output=True, text=True, cwd=ROOT)
    assert "EXIT=0\n" in proc.stderr and "HEAVY=\n" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("tied", [True, False])
def test_a_head_the_gguf_ties_to_the_embedding_is_compared_with_it(tmp_path, base, tied):
    """A tied model: BASE holds lm_head.weight alone (safetensors' save_model keeps one of the
    two), the GGUF token_embd.weight alone; llama.cpp then computes the output with the
    embedding, so that is what BASE's head is held to, and the tie is named."""
    import json as json_module

    from tests.gguf_fixtures import converted, hf_tensors, model_metadata, write_gguf

    hf = hf_tensors(base)
    config = json_module.loads((base / "config.json").read_text())
    if tied:
        hf["model.embed_tokens.weight"] = hf["lm_head.weight"]
    tensors = converted(hf, config, "llama")
    del tensors["output.weight"]
    gguf = write_gguf(tmp_path / "tied.gguf", "llama", tensors, "Q8_0", metadata=model_metadata("llama", config))
    head_only = {k: v for k, v in load_file(base / "model.safetensors").items() if k != "model.embed_tokens.weight"}
    folder = write_folder(base, tmp_path / "head-only", head_only)
    code, report = run_diff(folder, gguf)
    head = next(t["quant"] for t in report["tensors"] if t["name"] == "lm_head.weight")
    assert [t["kind"] for t in head["transforms"]] == ["tied-output"] and head["gguf"] == ["token_embd.weight"]
    assert (code, head["verdict"]) == ((0, "within") if tied else (1, "differs"))
    assert len(report["tensors"]) == 28  # nothing left over on either side


# ---------------------------------------------------------------------------------------------
# What cannot be compared, and hostile files


def converted_llama(base) -> tuple[dict, dict]:
    import json as json_module

    from tests.gguf_fixtures import converted, hf_tensors

    config = json_module.loads((base / "config.json").read_text())
    return converted(hf_tensors(base), config, "llama"), config


def trouble(*args) -> str:
    result = CliRunner().invoke(main, ["diff", *map(str, args)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("surgeon: error: ") and "Traceback" not in result.output
    return lines[0]


def test_a_gguf_of_another_architecture_is_trouble(tmp_path, base):
    from tests.gguf_fixtures import write_gguf

    tensors, _ = converted_llama(base)
    gguf = write_gguf(tmp_path / "q.gguf", "qwen2", tensors, "Q8_0", metadata={"qwen2.block_count": 2})
    assert "a GGUF of architecture 'qwen2', but" in trouble(base, gguf)


def test_a_truncated_gguf_is_trouble(tmp_path, base):
    gguf = convert_checkpoint(base, tmp_path / "m.gguf", "llama", "Q8_0")
    size = gguf.stat().st_size
    with open(gguf, "r+b") as handle:
        handle.truncate(size - 100)
    assert "run past the end of the file" in trouble(base, gguf)
    with open(gguf, "r+b") as handle:
        handle.truncate(200)
    assert "m.gguf" in trouble(base, gguf)


def test_a_gguf_whose_shapes_all_disagree_is_trouble(tmp_path, base):
    from tests.gguf_fixtures import model_metadata, write_gguf

    tensors, config = converted_llama(base)
    halved = {name: np.ascontiguousarray(value[..., :16]) for name, value in tensors.items()}
    gguf = write_gguf(tmp_path / "h.gguf", "llama", halved, "F16", metadata=model_metadata("llama", config))
    assert "disagree" in trouble(base, gguf) and "not a quant of this model" in trouble(base, gguf)


def test_tensors_on_one_side_or_of_another_shape_are_listed_and_differ(tmp_path, base):
    from tests.gguf_fixtures import model_metadata, write_gguf

    tensors, config = converted_llama(base)
    tensors["blk.0.ffn_up.weight"] = np.ascontiguousarray(tensors["blk.0.ffn_up.weight"][:, :32])
    del tensors["blk.1.ffn_down.weight"]
    tensors["blk.1.mystery.weight"] = np.ones((4, 32), np.float32)
    tensors["rope_freqs.weight"] = np.ones(4, np.float32)  # computed by the converter: expected
    gguf = write_gguf(tmp_path / "m.gguf", "llama", tensors, "Q8_0", metadata=model_metadata("llama", config))
    code, report = run_diff(base, gguf)
    found = {t["name"]: (t["quant"]["verdict"], t["quant"]["counts"]) for t in report["tensors"]}
    assert code == 1
    assert found["model.layers.0.mlp.up_proj.weight"] == ("shape-mismatch", True)
    assert found["model.layers.1.mlp.down_proj.weight"] == ("base-only", True)
    assert found["blk.1.mystery.weight"] == ("quant-only", True)
    assert found["rope_freqs.weight"] == ("quant-only", False)
    assert sum(v == ("within", True) for v in found.values()) == 27
    assert report["summary"]["layers_changed"] == [0, 1]
    assert report["summary"]["text"] == "not compared: 1 only in the base, 1 only in the quant, 1 of another shape"
    text = CliRunner().invoke(main, ["diff", str(base), str(gguf)]).stdout
    assert "Not compared" in text and "blk.1.mystery.weight" in text and "no Hugging Face tensor maps to it" in text


IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def iq4_nl_blocks(data: np.ndarray) -> np.ndarray:
    """IQ4_NL (gguf-py reads it, cannot write it; its bound was measured with llama.cpp), quantized as
    llama.cpp does in outline: a float16 scale per 32 values, the largest magnitude on -127,
    each value the nearest of the 16 non-linear levels; nibbles low for 0-15, high for 16-31."""
    blocks = data.reshape(-1, 32)
    peak = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    d = (peak / -127).astype(np.float16)
    codes = np.abs(blocks[:, :, None] / d.astype(np.float32)[:, None, None] - IQ4_NL_VALUES).argmin(axis=2)
    packed = (codes[:, :16] | (codes[:, 16:] << 4)).astype(np.uint8)
    raw = np.concatenate([d.reshape(-1, 1).view(np.uint8), packed], axis=1)
    return raw.reshape(data.shape[0], -1)


def write_iq4_nl_gguf(tmp_path, base):
    """The base converted to Q8_0, but for blk.0.ffn_up.weight in IQ4_NL."""
    from gguf import GGMLQuantizationType, GGUFWriter

    from tests.gguf_fixtures import encoded, model_metadata

    tensors, config = converted_llama(base)
    writer = GGUFWriter(tmp_path / "iq.gguf", "llama")  # write_gguf's steps, one tensor IQ4_NL
    for key, value in model_metadata("llama", config).items():
        kind = {str: "add_string", float: "add_float32", list: "add_array"}.get(type(value), "add_uint32")
        getattr(writer, kind)(key, value)
    for name, data in tensors.items():
        if name == "blk.0.ffn_up.weight":
            writer.add_tensor(name, iq4_nl_blocks(data), raw_dtype=GGMLQuantizationType.IQ4_NL)
            continue
        array, raw = encoded(data, "Q8_0")
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tmp_path / "iq.gguf"


def test_a_type_gguf_py_cannot_write_is_within_its_llama_cpp_measured_bound(tmp_path, base):
    code, report = run_diff(base, write_iq4_nl_gguf(tmp_path, base))
    up = next(t["quant"] for t in report["tensors"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    assert up["storage"] == "IQ4_NL" and up["verdict"] == "within" and up["bound"] is not None
    assert 0 < up["nmse"] <= up["bound"]
    assert code == 0 and report["quant"]["made_from"] is True


def test_a_type_with_no_measured_bound_is_unverified_never_within(tmp_path, base, monkeypatch):
    from surgeon.format import quant_bounds

    monkeypatch.setitem(quant_bounds.QUANT_BOUNDS, "IQ4_NL", quant_bounds.QuantBound(None, None, "unmeasured"))
    write_iq4_nl_gguf(tmp_path, base)
    code, report = run_diff(base, tmp_path / "iq.gguf")
    up = next(t["quant"] for t in report["tensors"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    assert code == 1 and report["quant"]["made_from"] is False
    assert up["storage"] == "IQ4_NL" and up["verdict"] == "unverified" and up["bound"] is None
    assert 0 < up["nmse"] < 0.02  # quantized well, and still not called within
    assert up["note"].startswith("no measured bound for IQ4_NL: unmeasured")
    assert report["summary"]["text"].startswith("not verified: 1 of 29 tensors are IQ4_NL, with no measured bound")
    assert report["summary"]["layers_changed"] == [] and report["quant"]["layers_unverified"] == [0]
    text = " ".join(CliRunner().invoke(main, ["diff", str(base), str(tmp_path / "iq.gguf")]).stdout.split())
    assert "unverified: 1 tensors in IQ4_NL, with no measured bound" in text
    assert f"the largest NMSE is {up['nmse']:.2g}, in model.layers.0.mlp.up_proj.weight" in text


def test_a_gguf_as_base_and_options_that_do_not_apply_are_trouble(tmp_path, base):
    gguf = convert_checkpoint(base, tmp_path / "m.gguf", "llama", "Q8_0")
    assert "a GGUF as BASE; name the safetensors checkpoint first" in trouble(gguf, base)
    assert "--no-stats" in trouble(base, gguf, "--no-stats")
    assert "--other-revision" in trouble(base, gguf, "--other-revision", "main")
    assert "no such file" in trouble(base, tmp_path / "missing.gguf")


def test_names_from_the_gguf_are_inert_on_the_terminal_and_in_the_card(tmp_path, base):
    from tests.gguf_fixtures import model_metadata, write_gguf

    tensors, config = converted_llama(base)
    evil = "blk.1.\x1b[31mred\x1b[0m|`x`\n# heading"
    tensors[evil] = np.ones((4, 32), np.float32)
    gguf = write_gguf(tmp_path / "e.gguf", "llama", tensors, "Q8_0", metadata=model_metadata("llama", config))
    terminal = CliRunner().invoke(main, ["diff", str(base), str(gguf)])
    assert terminal.exit_code == 1 and "\x1b" not in terminal.stdout and "\\x1b[31mred" in terminal.stdout
    card = CliRunner().invoke(main, ["diff", str(base), str(gguf), "--markdown"]).stdout
    line = next(line for line in card.splitlines() if "31mred" in line)
    assert line.startswith("- ") and "\x1b" not in card and "\n# heading" not in card
