"""The two model-card sections: "What's actually different from base" and "SHA256 evidence".

Every string that comes from the checkpoints (tensor, family, shard and file names, metadata
keys, sources) goes through surgeon.text: names as code spans (`md_code`), so that no name
can add a table cell, start a line, close its code span or become HTML.

SHA256s are written in full (64 hex digits), so that a reader can compare them with
`sha256sum`. They sit in a table of their own, one hash per row (two side by side would make
a row about 170 characters wide), inside a collapsed `<details>` block: that is two rows of
hex per changed file, up to 200 rows for a 100-shard model, while most readers of a card want the
verdicts, which stay in plain sight as bullets. `<details>` and `<summary>` are the only HTML
the card has, surgeon's own text, never a name.
"""

from __future__ import annotations

from surgeon.diff.engine import DiffReport, ShardDiff, TensorDiff
from surgeon.diff.report import (
    FamilyRow,
    channel_rows,
    channel_runs,
    differing,
    experts_note,
    reshape_rows,
    shown_family_rows,
)
from surgeon.model.names import layers_cell
from surgeon.text import layer_ranges, md_code, md_text

WEIGHT_SUFFIXES = ("weight", "bias")
# The card's only HTML, as lines: the collapsed block around the hash table
HASHES_OPEN = ("<details>", "<summary>Full SHA256 of each file, to compare with sha256sum</summary>")
HASHES_CLOSE = ("</details>",)


def render_markdown(report: DiffReport, more: list[str] | None = None) -> str:
    """The sections, then `more`: lines of Markdown the command adds after the evidence (the
    quality section, surgeon.quality.render.recorded_quality_section). The diff knows nothing
    of quality records: the command that renders the card asks for both."""
    lines = ["## What's actually different from base", ""]
    lines.append(
        f"Verified with a per-tensor {'SHA256' if report.hashed else 'byte'} comparison "
        f"(`surgeon diff`) of {md_code(report.other.name, table=False)} against "
        f"{md_code(report.base.name, table=False)}."
    )
    # which weight files were read, where transformers would not read them all (as diff and inspect say)
    notes = [(side, summary.note) for side, summary in (("base", report.base), ("other", report.other)) if summary.note]
    if notes:
        lines += ["", *(f"- Note ({side}): {md_text(note)}" for side, note in notes)]
    lines += ["", "| Tensor | Layers changed | Layers unchanged |", "|---|---|---|"]
    lines += [f"| {label} | {changed} | {unchanged} |" for label, changed, unchanged in _table(report)]
    lines += ["", _count_sentence(report)]
    lines += _head_sentences(report)
    lines += _reshape_lines(report)
    lines += ["", "## SHA256 evidence", ""]
    lines += [_shard_bullet(s, report) + _blob_name_note(s) for s in report.shards]
    lines += [f"- {md_code(f.name, table=False)}: {_file_verdict(f.status)}." for f in report.files]
    lines += _hash_table(report)
    if more:
        lines += ["", *more]
    return "\n".join(lines) + "\n"


def _table(report: DiffReport) -> list[tuple[str, str, str]]:
    rows = shown_family_rows(report)  # a mixture-of-experts family is one row, not one per expert
    stacks = {r.stack for r in rows if r.stack is not None}
    rows_out = []
    for row in rows:
        if row.stack is not None and row.changed:
            rows_out.append((_code(_label(row, stacks)), *_layer_cells(row)))
    unchanged_groups: dict[tuple, list[FamilyRow]] = {}
    for row in rows:
        if row.stack is not None and not row.changed:
            key = (row.stack, _brace_key(row.family), tuple(row.layers_unchanged))
            unchanged_groups.setdefault(key, []).append(row)
    for (stack, (prefix, suffix), _), group in unchanged_groups.items():
        leaves = [_brace_key_leaf(r.family) for r in group]
        family = _brace(prefix, leaves, suffix)
        label = family if len(stacks) < 2 else f"{stack}.{family}"
        rows_out.append((_code(label), *_layer_cells(group[0])))
    outside = [r for r in rows if r.stack is None]
    for changed in (True, False):
        names = [r.family for r in outside if r.changed == changed]
        if names:
            rows_out.append(
                (
                    ", ".join(map(_code, names)),
                    "changed" if changed else "(none)",
                    "—" if changed else "unchanged",
                )
            )
    return rows_out


def _label(row: FamilyRow, stacks: set[str]) -> str:
    return row.family if len(stacks) < 2 else f"{row.stack}.{row.family}"


def _layer_cells(row: FamilyRow) -> tuple[str, str]:
    changed = experts_note(row) or layers_cell(row.layers_changed)
    return changed, layers_cell(row.layers_unchanged, count_them=True)


def _split_family(family: str) -> tuple[str, str, str]:
    parts = family.split(".")
    suffix = parts.pop() if len(parts) > 1 and parts[-1] in WEIGHT_SUFFIXES else ""
    leaf = parts.pop()
    return ".".join(parts), leaf, suffix


def _brace_key(family: str) -> tuple[str, str]:
    prefix, _, suffix = _split_family(family)
    return prefix, suffix


def _brace_key_leaf(family: str) -> str:
    return _split_family(family)[1]


def _brace(prefix: str, leaves: list[str], suffix: str) -> str:
    middle = leaves[0] if len(leaves) == 1 else "{" + ", ".join(sorted(leaves)) + "}"
    return ".".join(p for p in (prefix, middle, suffix) if p)


def _code(text: str) -> str:
    """A name in a table cell."""
    return md_code(text)


def _names(names) -> str:
    """Names in a sentence, as code spans."""
    return ", ".join(md_code(name, table=False) for name in names)


def _header_difference(difference: str) -> str:
    """`__metadata__.KEY added` with the key (from the file) as a code span; the other
    differences are surgeon's own words."""
    head, _, verb = difference.rpartition(" ")
    if head.startswith("__metadata__."):
        return f"{md_code(head, table=False)} {md_text(verb)}"
    if difference == "data_offsets":  # a field of the safetensors header, written as code like __metadata__
        return md_code(difference, table=False)
    return md_text(difference)


def _count_sentence(report: DiffReport) -> str:
    diff = differing(report)
    total = len(report.tensors)
    if not diff:
        return f"All {total} tensors are byte-identical to the base model."
    families = sorted({t.family.split(".")[-2] if "." in t.family else t.family for t in diff})
    layers = sorted({t.layer for t in diff if t.layer is not None})
    where = f" for layers {layer_ranges(layers)}" if layers else ""
    return f"Of the {total} tensors, {len(diff)} differ from the base model: {_names(families)}{where}."


def _head_sentences(report: DiffReport) -> list[str]:
    lines = []
    zeroed = [(t.layer, t.heads.projection, t.heads.heads_with("zeroed")) for t in report.tensors if t.heads]
    removed = [(layer, heads) for layer, projection, heads in zeroed if heads and projection == "o_proj"]
    if removed:
        parts = [f"L{layer}: {', '.join(map(str, heads))}" for layer, heads in removed]
        lines += ["", f"Heads removed (`o_proj` input columns zeroed): {'; '.join(parts)}."]
    runs = channel_runs(channel_rows(report))
    if runs:
        parts = [
            f"{removed} of {width} in layer{'s' if len(layers) > 1 else ''} {layer_ranges(layers)}"
            for layers, removed, width in runs
        ]
        lines += ["", f"MLP channels removed (`down_proj` input columns zeroed): {'; '.join(parts)}."]
    for t in report.tensors:
        if t.heads and t.heads.uniform_attention:
            lines += [
                "",
                f"Warning: in layer {t.layer}, heads {', '.join(map(str, t.heads.uniform_attention))} "
                "have zero `q_proj` rows but non-zero `o_proj` columns: "
                "they attend uniformly and are not removed.",
            ]
    return lines


def _reshape_lines(report: DiffReport) -> list[str]:
    """A line per reshaped layer: the heads sliced out, and the kept heads against the base's.
    Only numbers and surgeon's words: no name from a file."""
    if report.reshape is None:
        return []
    where = "`prune_manifest.json`" if report.reshape.manifest else "matching the kept heads' rows to the base's"
    lines = ["", f"Attention heads sliced out (reshape; which heads from {where}, compared with the base's rows):", ""]
    for row in reshape_rows(report):
        kv = f"; KV heads {row.kv_heads}, removed {row.kv_removed}" if row.kv_heads else ""
        line = f"- L{row.layer}: heads {row.heads}, removed {row.removed}{kv}; "
        line += f"kept q/k/v rows {row.kept}, `o_proj` {row.o_proj}"
        lines.append(line + (f" ({md_text(row.note)})" if row.note else "") + ".")
    return lines


def _file_verdict(status: str) -> str:
    return {"identical": "byte-identical to the base", "changed": "differs"}.get(status, status)


def _shard_bullet(shard: ShardDiff, report: DiffReport) -> str:
    head = f"- {md_code(shard.label, table=False)}: "
    if shard.status == "identical":
        return head + "byte-identical to the base."
    if shard.status == "header-only":
        return head + (
            f"all {shard.tensors} tensors are byte-identical to the base; "
            f"only the header differs ({'; '.join(map(_header_difference, shard.header_differences))})."
        )
    if shard.status in ("added", "removed"):
        return head + f"{shard.status} ({shard.tensors} tensors)."
    return head + f"differs ({_what_changed(shard, report)})."


def _hash_table(report: DiffReport) -> list[str]:
    """Every shard's and file's full SHA256: one row per side, or one row where both sides
    hold the same bytes."""
    if not report.hashed:
        return ["", "No SHA256 was computed (`--no-hash`): the verdicts above come from a byte comparison."]
    rows = []
    for names, sha, source in [((s.name, s.other_name or s.name), s.sha256, s.sha256_source) for s in report.shards] + [
        ((f.name, f.name), f.sha256, ["bytes", "bytes"]) for f in report.files
    ]:
        if not any(sha):
            continue
        if sha[0] == sha[1] and names[0] == names[1]:
            sources = set(source)
            rows.append(f"| {md_code(names[1])} | both | {_full(sha[1], sources)} |")
            continue
        for label, side in (("this model", 1), ("base", 0)):
            if sha[side] is not None:  # None: the file is absent there, as its bullet says
                rows.append(f"| {md_code(names[side])} | {label} | {_full(sha[side], {source[side]})} |")
    return [
        "",
        # HTML of surgeon's own (see the module docstring); the blank lines around the table
        # make CommonMark parse it as Markdown inside the HTML block
        *HASHES_OPEN,
        "",
        "| File | Checkpoint | SHA256 |",
        "|---|---|---|",
        *rows,
        "",
        *HASHES_CLOSE,
    ]


def _full(sha: str | None, sources: set[str | None]) -> str:
    note = "" if sources == {"bytes"} else " (not hashed from the bytes: not evidence)"
    return f"`{sha}`{note}"


def _blob_name_note(shard: ShardDiff) -> str:
    """A hash taken from a hub cache blob's name or from the stat cache was not computed
    from these bytes, so it is not evidence, and the bullet says so. `surgeon diff --markdown`
    and the demo hash the bytes; this guards any other caller of render_markdown."""
    if "hub-blob-name" in shard.sha256_source:
        return " (SHA256 from the Hugging Face cache's blob name, not hashed from the bytes: not evidence.)"
    if "cache" in shard.sha256_source:
        return " (SHA256 from surgeon's hash cache, not hashed from the bytes in this run: not evidence.)"
    return ""


def _what_changed(shard: ShardDiff, report: DiffReport) -> str:
    inside = [t for t in differing(report) if _in_shard(t, shard)]
    layers = sorted({t.layer for t in inside if t.layer is not None})
    names = sorted({t.family.split(".")[-2] if "." in t.family else t.family for t in inside})
    where = f"L{layer_ranges(layers)} " if layers else ""
    return f"{where}{_names(names)}; {shard.tensors_differing} of {shard.tensors} tensors"


def _in_shard(t: TensorDiff, shard: ShardDiff) -> bool:
    return (t.base is not None and t.base.shard == shard.name) or (
        t.other is not None and t.other.shard == (shard.other_name or shard.name)
    )
