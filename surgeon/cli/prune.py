"""`surgeon prune`: options in, one engine call, a summary out."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click

from surgeon.errors import SurgeonError
from surgeon.prune.options import PRUNE_DEFAULTS


def _layer_frac(values: tuple[str, ...]) -> tuple[tuple[int, float], ...]:
    out = []
    for value in values:
        layer, _, frac = value.partition("=")
        try:
            if not (layer.isascii() and layer.isdigit() and len(layer) <= 9):
                raise ValueError(layer)  # int() would also take other scripts' digits
            out.append((int(layer), float(frac)))
        except ValueError:
            raise SurgeonError(f"--layer-frac {value!r}: use LAYER=FRACTION, e.g. 5=0.25") from None
    return tuple(out)


def register(main: click.Group, handle_errors, progress_for, console_for, debug_option) -> None:
    @main.command()
    @click.argument("base")
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(path_type=Path, file_okay=False),
        help="Folder to write the pruned checkpoint to (atomically).",
    )
    @click.option(
        "--prune-frac",
        type=float,
        default=0.125,
        show_default=True,
        help="Fraction of query heads to remove per layer.",
    )
    @click.option("--layers", default="all", show_default=True, help="Layers to prune: all, or ranges like 0-3,7.")
    @click.option("--layer-frac", multiple=True, metavar="L=FRAC", help="Per-layer override of --prune-frac.")
    @click.option(
        "--importance",
        type=click.Choice(["recon", "norm", "loo-nll"]),
        default="recon",
        show_default=True,
        help="How heads are scored.",
    )
    @click.option("--importance-quant", type=click.Choice(["nf4"]), help="Score loo-nll on nf4-rounded weights.")
    @click.option("--heal", type=click.Choice(["lstsq", "none"]), default="lstsq", show_default=True)
    @click.option("--ridge-rel", type=float, default=0.01, show_default=True)
    @click.option(
        "--propagate",
        type=click.Choice(["pruned", "base"]),
        default="pruned",
        show_default=True,
        help="Feed each layer the pruned (default) or the unpruned stream.",
    )
    @click.option(
        "--calib",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Calibration corpus (.txt or .jsonl); default: the bundled corpus (60k tokens of varied text).",
    )
    @click.option(
        "--calib-dataset",
        metavar="NAME[:CONFIG][:SPLIT]",
        help="A Hugging Face dataset (from the local cache when offline) instead of --calib.",
    )
    @click.option(
        "--calib-tokens",
        type=click.IntRange(2),
        help="Calibration tokens to use [default: 8 per column of the widest layer, at least 8192].",
    )
    @click.option("--calib-samples", type=click.IntRange(1), help="Use only the first N texts.")
    @click.option(
        "--max-tokens",
        type=click.IntRange(2),
        default=PRUNE_DEFAULTS.max_tokens,
        show_default=True,
        help="Tokens per calibration sample (longer texts are cut into several).",
    )
    @click.option("--batch-size", type=click.IntRange(1), default=PRUNE_DEFAULTS.batch_size, show_default=True)
    @click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N or cpu.")
    @click.option(
        "--dtype",
        default="auto",
        show_default=True,
        help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.",
    )
    @click.option("--offload-activations", is_flag=True, help="Keep the calibration stream in CPU memory.")
    @click.option("--tokenizer", type=click.Path(path_type=Path, exists=True), help="Tokenizer folder (default: BASE).")
    @click.option(
        "--workdir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Keep per-layer results here; a killed run resumes from it.",
    )
    @click.option("--force", is_flag=True, help="Replace an existing output folder.")
    @click.option("--fsync", "durable", is_flag=True, help="Wait for the files to reach the disk before the rename.")
    @click.option(
        "--eval",
        "run_eval",
        is_flag=True,
        help="Measure the result against BASE (perplexity, KL, top-1; see surgeon eval) into the manifest.",
    )
    @click.option(
        "--eval-text",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Text for --eval (.txt or .jsonl; default: the bundled held-out text).",
    )
    @click.option("--eval-tokens", type=click.IntRange(2), default=8192, show_default=True, help="Tokens for --eval.")
    @click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
    @debug_option
    @handle_errors
    def prune(
        base,
        output,
        prune_frac,
        layers,
        layer_frac,
        importance,
        importance_quant,
        heal,
        ridge_rel,
        propagate,
        calib,
        calib_dataset,
        calib_tokens,
        calib_samples,
        max_tokens,
        batch_size,
        device,
        dtype,
        offload_activations,
        tokenizer,
        workdir,
        force,
        durable,
        run_eval,
        eval_text,
        eval_tokens,
        as_json,
        quiet,
        debug,
    ) -> None:
        """Remove attention heads from BASE (mask mode) and heal o_proj, one layer at a time."""
        from surgeon.prune.engine import PruneOptions
        from surgeon.prune.engine import prune as run_prune

        options = PruneOptions(
            prune_frac=prune_frac,
            layers=layers,
            layer_fracs=_layer_frac(layer_frac),
            importance=importance,
            importance_quant=importance_quant,
            heal=heal,
            ridge_rel=ridge_rel,
            propagate=propagate,
            calib=str(calib) if calib else None,
            calib_dataset=calib_dataset,
            calib_tokens=calib_tokens,
            max_tokens=max_tokens,
            calib_samples=calib_samples,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            offload_activations=offload_activations,
            tokenizer=str(tokenizer) if tokenizer else None,
        )
        check_eval_text(eval_text, run_eval)
        result = run_prune(
            _checked_layers(base, layers, options.layer_fracs),
            output,
            options,
            workdir=workdir,
            force=force,
            progress=progress_for(quiet),
            cancel=threading.Event(),
            durable=durable,
            on_warning=_warn,
        )
        if run_eval:
            eval_options = eval_settings(eval_text, eval_tokens, device, dtype, tokenizer)
            result.manifest = record_quality(result.output, base, eval_options, quiet)
        if as_json:
            sys.stdout.write(json.dumps(result.manifest, indent=2) + "\n")
            return
        _summary(result, console_for())


def check_eval_text(text: Path | None, measured: bool) -> None:
    """--eval-text read before any work: a bad file is found before a long prune, not after."""
    if text is not None and not measured:
        raise SurgeonError("--eval-text is the text --eval measures on: give --eval too")
    if text is not None:
        from surgeon.quality.evaluate import load_eval_text

        load_eval_text(Path(text))


def eval_settings(text, tokens, device, dtype, tokenizer):
    from surgeon.quality.evaluate import EvalOptions

    return EvalOptions(
        text=str(text) if text else None,
        max_tokens=tokens,
        device=device,
        dtype=dtype,
        tokenizer=str(tokenizer) if tokenizer else None,
    )


def record_quality(output: Path, base: str, options, quiet: bool = False) -> dict:
    """OUTPUT measured against BASE, recorded in its manifest; the new manifest."""
    from surgeon.cli.main import _progress
    from surgeon.quality.record import attach, measure

    record = measure(output, base, options, progress=_progress(quiet)) | {"how": "measured after writing (--eval)"}
    return attach(output, record)


def _warn(message: str) -> None:
    from surgeon.text import inert

    click.echo(f"surgeon: warning: {inert(message)}", err=True)


def _checked_layers(base: str, layers: str, layer_fracs: tuple[tuple[int, float], ...]):
    """BASE opened, with --layers and --layer-frac checked against its decoder layers before
    any work, so that a bad layer is reported under the option's own name."""
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.model.families import describe
    from surgeon.model.names import parse_layers

    ckpt = open_checkpoint(base)
    count = len(describe(ckpt).layers)
    parse_layers(layers, count, what="--layers")
    for layer, frac in layer_fracs:
        if layer >= count:
            raise SurgeonError(f"--layer-frac {layer}={frac:g}: layer {layer} does not exist (0-{count - 1})")
    return ckpt


def _summary(result, console) -> None:
    from rich.table import Table
    from rich.text import Text

    from surgeon.model.names import layer_ranges
    from surgeon.text import inert

    manifest = result.manifest
    for message in manifest["messages"]:
        console.print(Text(inert(message), style="yellow"))  # messages and config values: never markup
    table = Table(title="Pruned layers", title_justify="left")
    for column in ("layer", "type", "heads", "pruned", "rel residual", "target rms", "ridge", "condition"):
        table.add_column(column, justify="right" if column not in ("type", "pruned") else "left")
    for layer in manifest["layers"]:
        refit = layer["refit"] or {}
        table.add_row(
            str(layer["layer"]),
            Text(inert(layer["layer_type"] or "")),
            f"{layer['num_heads']}x{layer['head_dim']}",
            ", ".join(map(str, layer["pruned_heads"])) or "-",
            _fmt(refit.get("rel_residual")),
            _fmt(refit.get("target_rms")),
            _fmt(refit.get("ridge")),
            _fmt(refit.get("condition")),
        )
    console.print(table)
    written = manifest["written"]
    line = (
        f"wrote {inert(result.output)}: layers {layer_ranges(written['layers']) or '(none)'} changed, "
        f"{len(written['tensors'])} tensors rewritten, {len(written['copied_shards'])} of "
        f"{len(written['shards'])} shards copied unchanged; {manifest['layer_passes']} layer passes "
        f"({result.forward_calls} forward calls)"
        + (f"; resumed at layer {result.resumed_at}" if result.resumed_at else "")
    )
    console.print(Text(line))


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"
