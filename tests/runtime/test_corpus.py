"""The calibration corpus: the bundled text, samples cut (not truncated), the token budget,
the too-few-tokens warnings, and Hugging Face datasets from the local cache (issue 10)."""

import hashlib
import importlib.resources
import json
import re

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main
from surgeon.demo import DEMO_MODEL, DEMO_TEXT
from surgeon.errors import SurgeonError
from surgeon.prune.engine import PruneOptions, prune
from surgeon.runtime.corpus import (
    AUTO_MIN_TOKENS,
    auto_token_budget,
    bundled_corpus,
    encode,
    load_corpus,
    parse_dataset_spec,
)
from surgeon.runtime.settings import RunSettings
from surgeon.runtime.tokenizer import load_tokenizer

TRAINED = DEMO_MODEL
CPU = RunSettings(device="cpu")


def test_the_bundled_corpus_is_large_varied_and_interleaved():
    texts, record = bundled_corpus()
    assert record["source"] == "bundled:calibration" and len(record["file_sha256"]) == 64
    assert len(texts) >= 60 and sum(map(len, texts)) > 200_000
    assert load_corpus(None) == (texts, record)
    tok = load_tokenizer(TRAINED)
    # any prefix mixes genres: the first dozen documents are not all of one kind
    firsts = {t.split()[0] for t in texts[:24:2]}
    assert len(firsts) >= 8
    assert len(tok(" ".join(texts[:12]), add_special_tokens=False)["input_ids"]) > AUTO_MIN_TOKENS // 4


def test_half_of_any_prefix_of_the_bundled_corpus_is_the_python_reference():
    texts, _ = bundled_corpus()
    folder = importlib.resources.files("surgeon") / "_data" / "calibration"
    reference = [(folder / f"pyref-{n:02d}.txt").read_text().strip() for n in range(1, 80)]
    # in file order, one after each of the 75 written documents, the last four at the end
    assert texts[1:150:2] + texts[150:] == reference and len(texts) == 154
    assert not set(texts[0:150:2]) & set(reference)


def test_the_held_out_text_shares_no_paragraph_with_the_calibration_corpus():
    data = importlib.resources.files("surgeon") / "_data"
    held = {f.name: f.read_text() for f in (data / "heldout").iterdir() if f.name.endswith(".txt")}
    calibration = {f.name: f.read_text() for f in (data / "calibration").iterdir() if f.name.endswith(".txt")}

    def paragraphs(texts):
        return {" ".join(p.split()) for t in texts.values() for p in t.split("\n\n") if len(p) > 80}

    assert len(held) == 6 and not paragraphs(held) & paragraphs(calibration)


def test_the_held_out_provenance_pins_every_file_by_its_bytes():
    folder = importlib.resources.files("surgeon") / "_data" / "heldout"
    pinned = re.findall(r"^([0-9a-f]{64})  (\S+\.txt)$", (folder / "PROVENANCE.md").read_text(), re.M)
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".txt"))
    assert sorted(name for _, name in pinned) == files
    assert all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest for digest, name in pinned)


def test_long_texts_are_cut_into_samples_each_with_one_bos():
    tok = load_tokenizer(TRAINED)
    text = "The river runs past the mill and the bridge. " * 40
    ids = tok(text, add_special_tokens=False)["input_ids"]
    samples = encode(tok, [text], max_tokens=64)
    assert len(samples) > 1 and all(len(s) <= 64 and s[0] == tok.bos_token_id for s in samples)
    assert all(s.count(tok.bos_token_id) == 1 for s in samples)
    assert [i for s in samples for i in s[1:]] == ids  # every token counts, none dropped
    capped = encode(tok, [text, text], max_tokens=64, budget=100)
    assert sum(map(len, capped)) == 100 and capped[:1] == samples[:1]


def test_the_default_budget_follows_the_widest_layer():
    assert auto_token_budget(128) == AUTO_MIN_TOKENS
    assert auto_token_budget(8192) == 8 * 8192


def test_prune_defaults_take_the_budget_and_record_it(tmp_path):
    result = prune(TRAINED, tmp_path / "out", PruneOptions(layers="0", run=CPU))
    calibration = result.manifest["calibration"]
    assert calibration["source"] == "bundled:calibration"
    assert calibration["tokens"] == calibration["token_budget"] == AUTO_MIN_TOKENS
    assert calibration["max_width"] == 64 and calibration["tokens_per_width"] == AUTO_MIN_TOKENS / 64
    assert result.manifest["options"]["max_tokens"] == 512 and result.manifest["messages"] == []
    assert max(layer["tokens"] for layer in result.manifest["layers"]) == AUTO_MIN_TOKENS


def test_too_few_tokens_for_the_width_warns_in_one_line_and_is_recorded(tmp_path):
    warnings = []
    result = prune(
        TRAINED,
        tmp_path / "out",
        PruneOptions(layers="0", calib_tokens=40, run=CPU),
        on_warning=warnings.append,
    )
    assert warnings == result.manifest["messages"]
    assert warnings[0].startswith("calibration: 40 tokens for layers of width 64, fewer than 4 per column")
    assert any(w.startswith("layer 0: G is rank-deficient (40 calibration tokens, width 64)") for w in warnings)
    assert all("\n" not in w for w in warnings)
    cli = CliRunner().invoke(
        main, ["prune", str(TRAINED), "-o", str(tmp_path / "cli"), "--layers", "0", "--calib-tokens", "40", "-q"]
    )
    assert cli.exit_code == 0 and "surgeon: warning: calibration: 40 tokens" in cli.stderr


def test_enough_tokens_gives_no_rank_warning(tmp_path):
    result = prune(TRAINED, tmp_path / "out", PruneOptions(layers="0", calib_tokens=1024, run=CPU))
    assert result.manifest["messages"] == []


@pytest.mark.parametrize("spec", ["", ":x", "a::b", "a:b:c:d", "name:"])
def test_bad_dataset_specs_are_one_line(spec):
    with pytest.raises(SurgeonError, match="use NAME, NAME:CONFIG or NAME:CONFIG:SPLIT"):
        parse_dataset_spec(spec)


def test_dataset_spec_parts():
    assert parse_dataset_spec("prose") == ("prose", None, "train")
    assert parse_dataset_spec("prose:default:validation") == ("prose", "default", "validation")


@pytest.fixture
def cached_dataset(tmp_path, monkeypatch):
    """A dataset named "prose" in a real `datasets` cache, built by datasets' own Parquet
    builder, laid out as `load_dataset("prose")` finds it offline."""
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    lines = (DEMO_TEXT).read_text().splitlines()
    rows = [" ".join(lines[i : i + 8]) for i in range(0, len(lines), 8)]
    pq.write_table(pa.table({"id": list(range(len(rows))), "body": rows}), tmp_path / "train.parquet")
    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    builder = Parquet(
        dataset_name="prose",
        hash="0" * 16,
        cache_dir=str(cache),
        data_files={"train": [str(tmp_path / "train.parquet")]},
    )
    builder.download_and_prepare()
    (cache / "prose" / builder.config_id).rename(cache / "prose" / "default")  # as a Hub download names it
    return rows


def test_prune_takes_a_cached_hugging_face_dataset(cached_dataset, tmp_path):
    result = prune(TRAINED, tmp_path / "out", PruneOptions(layers="0", calib_dataset="prose", run=CPU))
    calibration = result.manifest["calibration"]
    assert calibration["source"] == "dataset:prose" and calibration["split"] == "train"
    assert calibration["rows"] == len(cached_dataset) and calibration["tokens"] > 0
    assert str(tmp_path / "datasets-cache") not in json.dumps(calibration)  # named, never located


def test_a_missing_dataset_or_both_sources_are_one_line(cached_dataset, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["prune", str(TRAINED), "-o", str(tmp_path / "a"), "--calib-dataset", "nope", "-q"])
    assert missing.exit_code == 2 and "calibration dataset 'nope': cannot load it" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    split = runner.invoke(
        main, ["prune", str(TRAINED), "-o", str(tmp_path / "b"), "--calib-dataset", "prose:default:test", "-q"]
    )
    assert split.exit_code == 2 and "cannot load it" in split.stderr
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some text here.\n")
    both = runner.invoke(
        main, ["prune", str(TRAINED), "-o", str(tmp_path / "c"), "--calib", str(corpus), "--calib-dataset", "prose"]
    )
    assert both.exit_code == 2 and "not both" in both.stderr
