"""Property-based fuzzing of what surgeon reads from untrusted folders: safetensors headers,
index and config files, tensor names and layer ranges. For any input the answer is a parsed
result or a SurgeonError, never another exception, within a deadline and a memory bound.

The header parser reads the top object one member at a time (see read_header); a second,
simple reading with json.loads serves as its oracle: both must accept the same headers and
find the same tensors. Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from functools import wraps
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import DTYPES
from surgeon.format.safetensors import (
    METADATA_KEY,
    _check_coverage,
    _parse_entry,
    _parse_metadata,
    _reject_duplicates,
    read_header,
)
from surgeon.model.names import MAX_LAYER_DIGITS, parse_layer_spec, parse_name

FUZZ = settings(
    max_examples=150,
    deadline=2000,  # ms per example, on a loaded 2-core machine
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MEMORY_LIMIT = 32 << 20  # every input here is a few KB; 32 MB is far above any honest parse


def bounded_memory(test):
    """Each example's traced peak stays under MEMORY_LIMIT."""

    @wraps(test)
    def run(*args, **kwargs):
        tracemalloc.start()
        try:
            test(*args, **kwargs)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"peak {peak >> 20} MB"

    return run


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def parse_or_error(func, *args):
    """func's result, or None for a SurgeonError; any other exception fails the test."""
    try:
        return func(*args)
    except SurgeonError as exc:
        assert "\n" not in str(exc).strip(), "an error is one line"
        return None


# --- headers ---------------------------------------------------------------------------

JSON_BITS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b'"',
    b"\\",
    b" ",
    b"\n",
    b"0",
    b"-1",
    b"1e9",
    b"null",
    b"NaN",
    b"\xff",
]


@st.composite
def headers(draw) -> tuple[bytes, bytes]:
    """(header JSON, data): usually a valid header, then mutated at the JSON or text level."""
    names = draw(st.lists(st.text(min_size=1, max_size=12), max_size=6, unique=True))
    header: dict[str, object] = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = DTYPES[dtype].bits
        for dim in shape:
            size *= dim
        size = size // 8 if size % 8 == 0 else 1
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header[METADATA_KEY] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    data = b"\0" * offset
    header, data = draw(st.sampled_from([_as_is, _json_mutation, _data_mutation]))(draw, header, data)
    text = json.dumps(header, separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")])))
    raw = text.encode("utf-8")
    if draw(st.integers(0, 3)) == 0:  # text-level damage: the scanner's own paths
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.integers(0, 3))
        raw = raw[:at] + draw(st.sampled_from(JSON_BITS)) * draw(st.integers(0, 2)) + raw[at + cut :]
    if draw(st.booleans()):
        raw += b" " * (-len(raw) % 8)
    return raw, data


def _as_is(draw, header, data):
    return header, data


def _json_mutation(draw, header, data):
    if not header:
        return {"a": draw(_json_values())}, data
    name = draw(st.sampled_from(sorted(header)))
    entry = header[name]
    if not isinstance(entry, dict) or "data_offsets" not in entry:
        return dict(header, **{name: draw(_json_values())}), data
    key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "drop", "whole"]))
    entry = dict(entry)
    if key == "drop":
        del entry[draw(st.sampled_from(sorted(entry)))]
    elif key == "whole":
        entry = draw(_json_values())
    elif key == "data_offsets" and draw(st.booleans()):
        entry[key] = [entry[key][0] + draw(st.integers(-3, 3)), entry[key][1] + draw(st.integers(-3, 3))]
    else:
        entry[key] = draw(_json_values())
    return dict(header, **{name: entry}), data


def _data_mutation(draw, header, data):
    return header, data + b"\0" * draw(st.integers(1, 3)) if draw(st.booleans()) else data[: -1 or None]


def _json_values():
    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=8,
    )


def shard_file(path: Path, raw_header: bytes, data: bytes, length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(raw_header) if length is None else length) + raw_header + data)
    return path


def oracle(raw: bytes, data_len: int):
    """The same checks by the plainest means: json.loads of the whole header, then the
    module's own entry, metadata and coverage checks. {name: (dtype, shape, start, end)}
    and the metadata, or None when the header is bad."""
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            return None
        parsed = json.loads(text, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    try:
        metadata = _parse_metadata(parsed.pop(METADATA_KEY), "") if METADATA_KEY in parsed else None
        start = 8 + len(raw)
        entries = {n: _parse_entry(n, e, "") for n, e in parsed.items()}
        from surgeon.format.safetensors import TensorInfo

        infos = [TensorInfo(n, d, s, "f", start + b, start + e) for n, (d, s, b, e) in entries.items()]
        _check_coverage(infos, data_len, start, "")
    except SurgeonError:
        return None
    return {i.name: (i.dtype.name, i.shape, i.start, i.end) for i in infos}, metadata


@FUZZ
@given(st.binary(max_size=600))
@bounded_memory
def test_read_header_on_arbitrary_bytes(scratch, blob):
    path = scratch / "any.safetensors"
    path.write_bytes(blob)
    parse_or_error(read_header, path)


@FUZZ
@given(headers())
@bounded_memory
def test_read_header_agrees_with_json_loads(scratch, case):
    raw, data = case
    shard = parse_or_error(read_header, shard_file(scratch / "h.safetensors", raw, data))
    expected = oracle(raw, len(data))
    if expected is None:
        assert shard is None, "accepted a header that json.loads and the checks refuse"
        return
    assert shard is not None, "refused a header that json.loads and the checks accept"
    tensors, metadata = expected
    assert {n: (i.dtype.name, i.shape, i.start, i.end) for n, i in shard.tensors.items()} == tensors
    assert list(shard.tensors) == list(tensors) and shard.metadata == metadata


TOKENS = ["{", "}", "[", "]", ":", ",", " ", "\n", '"a"', '"b"', '"__metadata__"', '"dtype"', '"F32"', '"U8"']
TOKENS += ['"shape"', '"data_offsets"', "0", "4", "[0, 4]", "[0, 1]", "[1]", "[]", "null", '"\\u00e9"', '"\\"']


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.integers(0, 8))
@bounded_memory
def test_read_header_agrees_with_json_loads_on_token_soup(scratch, tokens, data_len):
    """Headers made of JSON's own tokens in any order: the member-by-member reading must
    refuse exactly what json.loads refuses (stray commas, colons, brackets, extra data)."""
    raw = ("{" + "".join(tokens)).encode()
    shard = parse_or_error(read_header, shard_file(scratch / "t.safetensors", raw, b"\0" * data_len))
    expected = oracle(raw, data_len)
    assert (shard is None) == (expected is None)
    if shard is not None:
        assert {n: (i.dtype.name, i.shape, i.start, i.end) for n, i in shard.tensors.items()} == expected[0]


@FUZZ
@given(headers(), st.integers(0, 2**64 - 1))
@bounded_memory
def test_read_header_with_any_declared_length(scratch, case, length):
    raw, data = case
    parse_or_error(read_header, shard_file(scratch / "n.safetensors", raw, data, length))


# --- index and config ------------------------------------------------------------------


SHARD = "model-00001-of-00001.safetensors"


@pytest.fixture(scope="module")
def folder(scratch) -> Path:
    """A one-shard checkpoint whose index and config the examples overwrite (its shard is no
    model.safetensors, which transformers, and so surgeon, would read instead of any index)."""
    root = scratch / "ckpt"
    root.mkdir()
    body = json.dumps({"model.layers.0.w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    shard_file(root / SHARD, body, b"\0" * 4)
    return root


def index_documents():
    shard_names = st.sampled_from(
        [SHARD, "model.safetensors", "other.safetensors", "", ".", "..", "../model.safetensors", "/etc/passwd"]
    )
    weight_maps = st.dictionaries(
        st.sampled_from(["model.layers.0.w", "x", ""]), shard_names | _json_values(), max_size=3
    )
    documents = st.fixed_dictionaries(
        {"weight_map": weight_maps | _json_values()}, optional={"metadata": _json_values()}
    )
    return (
        documents.map(lambda d: json.dumps(d).encode())
        | st.binary(max_size=300)
        | _json_values().map(lambda v: json.dumps(v).encode())
    )


@FUZZ
@given(
    index_documents(),
    st.one_of(st.none(), st.binary(max_size=200), _json_values().map(lambda v: json.dumps(v).encode())),
)
@bounded_memory
def test_open_checkpoint_with_any_index_and_config(folder, index, config):
    (folder / "model.safetensors.index.json").write_bytes(index)
    if config is None:
        (folder / "config.json").unlink(missing_ok=True)
    else:
        (folder / "config.json").write_bytes(config)
    ckpt = parse_or_error(open_checkpoint, folder)
    if ckpt is not None:
        assert set(ckpt.tensors) == {"model.layers.0.w"} and (ckpt.config is None) == (config is None)


# --- names and layer ranges ------------------------------------------------------------


@FUZZ
@given(
    st.text(max_size=60)
    | st.builds(
        lambda a, n, b: f"{a}.layers.{n}.{b}",
        st.text(max_size=8),
        st.text("0123456789\u0663\u00b2", max_size=12),
        st.text(max_size=8),
    )
)
@bounded_memory
def test_parse_name_splits_any_text_losslessly(name):
    parsed = parse_name(name)
    if parsed.layer is None:
        assert parsed.stack is None and parsed.family == name
        return
    assert 0 <= parsed.layer < 10**MAX_LAYER_DIGITS
    assert f"{parsed.stack}.{parsed.layer}.{parsed.family}" == name  # ASCII digits, no leading zero


@FUZZ
@given(
    st.text(max_size=40)
    | st.lists(st.from_regex(r"\A[0-9]{1,12}(-[0-9]{1,12})?\Z"), min_size=1, max_size=4).map(",".join),
    st.integers(0, 64) | st.lists(st.integers(0, 10**9 - 1), max_size=20),
)
@bounded_memory
def test_layer_ranges_resolve_within_the_model(spec, existing):
    chosen = parse_or_error(lambda: parse_layer_spec(spec, "--keep", allow_none=True).resolve(existing))
    if chosen is not None:
        allowed = set(range(existing)) if isinstance(existing, int) else set(existing)
        assert set(chosen) <= allowed and chosen == sorted(set(chosen))
