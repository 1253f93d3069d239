"""`surgeon prune`: options in, one engine call, a summary out."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from surgeon.cli.common import console_for, handle_errors, progress_for, warn, warn_skipped
from surgeon.cli.evaluate import check_eval_text, eval_settings, quality_options, record_quality
from surgeon.cli.options import build, options_from
from surgeon.diff.fold import FoldedName
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import model_layout
from surgeon.model.names import parse_layers
from surgeon.prune.heads import counts_text
from surgeon.prune.options import PruneOptions
from surgeon.text import inert, layer_ranges


def _layer_fracs(_ctx, _param, values: tuple[str, ...]) -> tuple[tuple[int, float], ...]:
    """--layer-frac L=FRAC values, each checked where it is given."""
    out = []
    for value in values:
        layer, _, frac = value.partition("=")
        try:
            if not (layer.isascii() and layer.isdigit() and len(layer) <= 9):
                raise ValueError(layer)  # int() would also take other scripts' digits
            out.append((int(layer), float(frac)))
        except ValueError:
            raise click.BadParameter(f"{value!r}: use LAYER=FRACTION, e.g. 5=0.25") from None
    return tuple(out)


@click.command()
@click.argument("base")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write the pruned checkpoint to (atomically).",
)
@options_from(PruneOptions, layer_fracs={"callback": _layer_fracs})
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep per-layer results here; a killed run resumes from it.",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--fsync", "durable", is_flag=True, help="Wait for the files to reach the disk before the rename.")
@quality_options
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option(
    "-q", "--quiet", is_flag=True, help="Quiet: no progress bar and no table, only the line saying what was written."
)
@click.option("--no-progress", is_flag=True, help="No progress bar (it goes to stderr, on a terminal only).")
@handle_errors
def prune(
    base, output, workdir, force, durable, run_eval, eval_text, eval_tokens, as_json, quiet, no_progress, **kw
) -> None:
    """Remove attention heads from BASE (mask mode) and heal o_proj, one layer at a time.

    --mode reshape then slices them out: a smaller model that stock transformers loads. Every
    layer keeps the same number of query heads and every KV group the same share, so only some
    fractions are reachable; another is refused with the ones that are.
    """
    # Deferred: the engine imports torch, which --help and the light install do without.
    from surgeon.prune.engine import prune as run_prune

    if kw.get("ffn_frac") and _defaulted("prune_frac"):  # --ffn-frac alone: channels only, no head
        kw["prune_frac"] = 0.0
    options = build(PruneOptions, kw)
    check_eval_text(eval_text, run_eval)
    result = run_prune(
        _checked_layers(base, options.layers, options.layer_fracs),
        output,
        options,
        workdir=workdir,
        force=force,
        progress=progress_for(quiet or no_progress),
        cancel=threading.Event(),
        durable=durable,
        on_warning=warn,
    )
    warn_skipped(result.manifest)
    if run_eval:
        eval_options = eval_settings(eval_text, eval_tokens, options.run)
        result.manifest = record_quality(result.output, base, eval_options, quiet or no_progress)
    if as_json:
        sys.stdout.write(json.dumps(result.manifest, indent=2) + "\n")
        return
    _summary(result, console_for(), table=not quiet)


def _defaulted(name: str) -> bool:
    source = click.get_current_context().get_parameter_source(name)
    return source in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def _checked_layers(base: str, layers: str, layer_fracs: tuple[tuple[int, float], ...]):
    """BASE opened, with --layers and --layer-frac checked against its decoder layers before
    any work, so that a bad layer is reported under the option's own name."""
    ckpt = open_checkpoint(base)
    count = len(model_layout(ckpt).layers)
    parse_layers(layers, count, what="--layers")
    for layer, frac in layer_fracs:
        if layer >= count:
            raise SurgeonError(f"--layer-frac {layer}={frac:g}: layer {layer} does not exist (0-{count - 1})")
    return ckpt


def _summary(result, console, table: bool = True) -> None:
    manifest = result.manifest
    if table:
        for message in manifest["messages"]:
            console.print(Text(inert(message), style="yellow"))  # messages and config values: never markup
        console.print(_layer_table(manifest))
        bias_note = _bias_note(manifest)
        if bias_note:
            console.print(Text(bias_note, style="dim"))
        console.print(Text(f"pruned {_pruned_text(result)}"))  # what was asked, and what it came to
    written = manifest["written"]
    line = (
        f"wrote {inert(result.output)}: layers {layer_ranges(written['layers']) or '(none)'} changed, "
        f"{len(written['tensors'])} tensors rewritten, {len(written['copied_shards'])} of "
        f"{len(written['shards'])} shards copied unchanged; {manifest['layer_passes']} layer passes "
        f"({result.forward_calls} forward calls)"
        + (f"; resumed at layer {result.resumed_at}" if result.resumed_at else "")
    )
    console.print(Text(line))
    if result.reshape_line is not None:
        console.print(Text(inert(result.reshape_line)))
    quality = manifest.get("quality") or {}
    if quality.get("eval"):  # --eval: the figures, and the text they were measured on
        from surgeon.quality.render import quality_line  # deferred: rich tables, for this line only

        console.print(Text(quality_line(quality)))


def _layer_table(manifest: dict) -> Table:
    table = Table(title="Pruned layers", title_justify="left")
    ffn = any(layer.get("ffn_width") for layer in manifest["layers"])  # --ffn-frac: two columns more
    columns = ["layer", "type", "heads", "pruned", "rel residual", "target rms", "ridge", "condition"]
    for column in columns + (["channels", "mlp residual"] if ffn else []):
        table.add_column(column, justify="right" if column not in ("type", "pruned") else "left")
    for layer in manifest["layers"]:
        refit = layer["refit"] or {}
        cells: list = [
            str(layer["layer"]),
            FoldedName(layer["layer_type"] or ""),
            f"{layer['num_heads']}x{layer['head_dim']}",
            ", ".join(map(str, layer["pruned_heads"])) or "-",
            _fmt(refit.get("rel_residual")),
            _fmt(refit.get("target_rms")),
            _fmt(refit.get("ridge")),
            _fmt(refit.get("condition")),
        ]
        if ffn:
            width, removed = layer.get("ffn_width") or 0, layer.get("ffn_pruned_channels") or []
            cells += [
                f"-{len(removed)}/{width}" if width else "-",
                _fmt((layer.get("ffn_refit") or {}).get("rel_residual")),
            ]
        table.add_row(*cells)
    return table


def _pruned_text(result) -> str:
    """The heads (as asked, and what they came to) and the MLP channels each layer lost."""
    layers = result.manifest["layers"]
    runs: list[tuple[list[int], int, int]] = []
    for layer in layers:
        if layer.get("ffn_width"):
            key = (len(layer["ffn_pruned_channels"]), layer["ffn_width"])
            if runs and runs[-1][1:] == key:
                runs[-1][0].append(layer["layer"])
            else:
                runs.append(([layer["layer"]], *key))
    channels = "; ".join(
        f"{removed} of {width} MLP channels in {'layer' if len(idx) == 1 else 'each of layers'} {layer_ranges(idx)}"
        for idx, removed, width in runs
    )
    if not any(layer["pruned_heads"] for layer in layers) and channels:
        return channels
    return counts_text(result.head_counts) + (f"; {channels}" if channels else "")


def _bias_note(manifest: dict) -> str | None:
    """Where the removed channels' mean output went, when the MLP has no bias to take it."""
    if not any(layer.get("ffn_bias") == "absent" for layer in manifest["layers"]):
        return None
    if manifest["options"].get("heal") == "none":
        return "the MLP has no bias (mlp_bias false): the removed channels' mean output is lost (heal none)"
    return "the MLP has no bias (mlp_bias false): the kept channels' refit alone absorbs the removed ones' mean output"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"
