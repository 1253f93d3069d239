"""`surgeon eval`: perplexity, KL and top-1 agreement of a model against its base."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click

from surgeon.errors import SurgeonError


def register(main: click.Group, handle_errors, progress_for, console_for, debug_option) -> None:
    @main.command("eval")
    @click.argument("model")
    @click.option("--base", required=True, help="The model MODEL is compared with (its tokenizer is used).")
    @click.option(
        "--text",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Text to score, documents separated by blank lines (default: the bundled held-out text).",
    )
    @click.option(
        "--jsonl", type=click.Path(path_type=Path, dir_okay=False), help='JSON lines, one {"text": ...} each.'
    )
    @click.option("--window", type=click.IntRange(2), default=512, show_default=True, help="Tokens per window.")
    @click.option("--max-tokens", type=click.IntRange(2), default=8192, show_default=True, help="Tokens in all.")
    @click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True, help="Windows per forward.")
    @click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N or cpu.")
    @click.option(
        "--dtype", default="auto", show_default=True, help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32."
    )
    @click.option(
        "--tokenizer",
        type=click.Path(path_type=Path, exists=True, file_okay=False),
        help="Tokenizer folder (default: BASE).",
    )
    @click.option(
        "--layers",
        help="Score BASE with only these layers of MODEL put on it (ranges like 0-3,7), composed in memory: "
        "what salvage --keep would write.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema surgeon.eval/1).")
    @click.option("--no-progress", is_flag=True, help="No progress bar.")
    @debug_option
    @handle_errors
    def eval_command(
        model,
        base,
        text,
        jsonl,
        window,
        max_tokens,
        batch_size,
        device,
        dtype,
        tokenizer,
        layers,
        as_json,
        no_progress,
        debug,
    ) -> None:
        """Score MODEL against BASE on the same text, teacher-forced, one layer at a time.

        Reports the perplexity of both, the KL divergence of MODEL's next-token distribution
        from BASE's (mean and 99th percentile) and how often their top token agrees, in total
        and per window.
        """
        from surgeon.model.names import parse_layers
        from surgeon.quality.evaluate import EvalOptions, EvalSession

        if text is not None and jsonl is not None:
            raise SurgeonError("--text and --jsonl are exclusive: pick one")
        options = EvalOptions(
            text=str(jsonl or text) if (jsonl or text) else None,
            text_format="jsonl" if jsonl else "auto",
            window=window,
            max_tokens=max_tokens,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            tokenizer=str(tokenizer) if tokenizer else None,
            cache_budget_bytes=0,  # one call: a cache of the base's stream would only add to the peak
        )
        session = EvalSession(base, model, options, progress=progress_for(no_progress), cancel=threading.Event())
        if layers is None:
            data = session.evaluate_model().to_json()
        else:
            plan = parse_layers(layers, len(session.base_layout.layers), what="--layers")
            data = session.evaluate_plans([plan])[0].to_json()
        if as_json:
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
            return
        from surgeon.quality.render import render_eval

        render_eval(data, console_for())
