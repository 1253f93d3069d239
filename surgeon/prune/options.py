"""`surgeon prune`'s options, apart from the engine: the CLI builds its options from these
fields (surgeon.cli.options) without importing torch (which `surgeon diff` must never load).

The names of the importance scorers and heal methods are owned here, as Literal types; the
torch implementations register under the same names (surgeon.prune.importance.SCORERS,
surgeon.prune.heal.HEALERS), and a test holds the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from surgeon.errors import SurgeonError
from surgeon.options import OWN_TEXT_ADVICE, TEXT_FILE_HELP, field_named, in_range, option, range_text
from surgeon.runtime.settings import Quant, RunSettings

Importance = Literal["recon", "norm", "loo-nll"]
Heal = Literal["lstsq", "anchored", "none"]
Propagate = Literal["pruned", "base"]
Mode = Literal["mask", "reshape"]
FfnImportance = Literal["wanda", "flap", "obs"]
IMPORTANCE: tuple[str, ...] = get_args(Importance)
HEALS: tuple[str, ...] = get_args(Heal)
PROPAGATE: tuple[str, ...] = get_args(Propagate)
MODES: tuple[str, ...] = get_args(Mode)
FFN_IMPORTANCE: tuple[str, ...] = get_args(FfnImportance)


@dataclass(frozen=True)
class PruneOptions:
    prune_frac: float = option(0.125, "Fraction of query heads to remove per layer.", minimum=0, below=1)
    mode: Mode = option(
        "mask",
        "mask (zero the pruned heads, every shape kept) or reshape (slice them out: a smaller model that "
        "stock transformers loads; every layer, a fraction that every KV group can share: a fraction "
        "that is not reachable is refused with the ones that are).",
    )
    layers: str = option("all", "Layers to prune: all, or ranges like 0-3,7.")
    layer_fracs: tuple[tuple[int, float], ...] = option(
        (), "Per-layer override of --prune-frac, e.g. 5=0.25; repeatable.", flag="--layer-frac", metavar="L=FRAC"
    )
    importance: Importance = option(
        "recon",
        "How heads are scored: recon (o_proj output error left after removing the head and refitting the others), "
        "norm (the head's output energy through o_proj), "
        "loo-nll (calibration loss increase with the head masked; slow).",
    )
    ffn_frac: float = option(
        0.0,
        "Fraction of MLP channels to remove per layer (gate and up rows, down_proj columns), after its heads; "
        "given alone, --prune-frac defaults to 0: channels only.",
        minimum=0,
        below=1,
    )
    # wanda measured best out of the calibration's domain (benchmarks/bench_ffn.py): SmolLM2-135M,
    # 10% of the MLP channels in all 30 layers, independent text +17.8% / KL 0.218, against flap's
    # +20.2% / 0.231 and obs's +20.6% / 0.237 (obs fits the calibration text best, and that is what
    # it over-fits); and it costs nothing beyond G.
    ffn_importance: FfnImportance = option(
        "wanda",
        "How MLP channels are scored: wanda (weight norm x input RMS), flap (input variance x weight norm^2) "
        "or obs (the error of removing the channel and refitting the others, removed greedily).",
    )
    # The MLP's G is wider for its tokens (SmolLM2: 1536 columns at 8 tokens each, against the
    # attention's 576 at 14): its heal over-fits the calibration text more, and a larger ridge
    # measured better out of its domain (benchmarks/bench_ffn.py, SmolLM2-135M, 10% of the
    # channels in all 30 layers, independent text): 0.01 +17.8% / KL 0.218, 0.1 +16.6% / 0.209, 1 +17.3% / 0.210.
    ffn_ridge_rel: float = option(
        0.1, "Ridge of the MLP's heal, relative to the mean diagonal of the kept channels' Gram matrix.", minimum=0
    )
    importance_quant: Quant | None = option(None, "Score loo-nll on weights rounded to nf4 (bitsandbytes).")
    # anchored measured best out of the calibration's domain (issue 19, benchmarks/bench_domains.py):
    # SmolLM2-135M, 1 of 9 heads in all 30 layers, independent text +8.8% / KL 0.100 against
    # lstsq's +9.5% / KL 0.110, and lower KL on every text scored.
    heal: Heal = option(
        "anchored",
        "How o_proj is refit: anchored (ridge least squares on the calibration stream, its ridge pulling "
        "toward the base's weights), lstsq (the same, its ridge pulling toward zero) or none (zero only).",
    )
    ridge_rel: float = option(
        0.01, "Ridge of the heal, relative to the mean diagonal of the kept heads' Gram matrix.", minimum=0
    )
    propagate: Propagate = option("pruned", "Feed each layer the pruned stream (pruned) or the unpruned one (base).")
    calib: str | None = option(
        None,
        f"Calibration text: {TEXT_FILE_HELP}; default: the bundled corpus (98k tokens: varied written "
        "text and the Python Language Reference); "
        f"{OWN_TEXT_ADVICE}.",
        path="file",
    )
    calib_dataset: str | None = option(
        None,
        "A Hugging Face dataset (from the local cache when offline) instead of --calib.",
        metavar="NAME[:CONFIG][:SPLIT]",
    )
    calib_tokens: int | None = option(
        None, "Calibration tokens [default: 8 per column of the widest pruned layer, at least 8192].", minimum=2
    )
    # --sample-tokens: eval's --max-tokens meant tokens in all, this one tokens per sample; the
    # field keeps its name, the manifest's options.max_tokens
    max_tokens: int = option(
        512,
        "Tokens per calibration sample; longer texts are cut into several.",
        minimum=2,
        flag="--sample-tokens",
        aliases=("--max-tokens",),
    )  # long enough for attention to look far back
    calib_samples: int | None = option(None, "Use only the first N texts.", minimum=1)
    batch_size: int = option(8, "Calibration samples per forward pass.", minimum=1)
    # device, dtype and tokenizer: --device, --dtype and --tokenizer, and options.device,
    # .dtype and .tokenizer in the manifest (surgeon.options.record), as before they were one
    # record. Not its quant: the layers stream in `dtype`; nf4 is importance_quant's, for the
    # loo-nll scores alone (see RunSettings.quant).
    run: RunSettings = option(RunSettings(), "How the model runs.", fields=("device", "dtype", "tokenizer"))
    offload_activations: bool = option(False, "Keep the calibration stream in CPU memory.")

    def validate(self) -> None:
        fraction = field_named(PruneOptions, "prune_frac")  # its range, as --prune-frac and the TUI offer it
        if not all(in_range(fraction, f) for f in (self.prune_frac, *(f for _, f in self.layer_fracs))):
            raise SurgeonError(f"the fraction of heads to prune must be in {range_text(fraction)}")
        channels = field_named(PruneOptions, "ffn_frac")
        if not in_range(channels, self.ffn_frac):
            raise SurgeonError(f"the fraction of MLP channels to prune must be in {range_text(channels)}")
        self.run.validate()
        checks = [
            (self.run.quant is None, "prune runs the layers in their dtype: nf4 is for loo-nll scoring alone"),
            (self.importance in IMPORTANCE, f"importance must be one of {', '.join(IMPORTANCE)}"),
            (self.heal in HEALS, f"heal must be one of {', '.join(HEALS)}"),
            (self.propagate in PROPAGATE, f"propagate must be one of {', '.join(PROPAGATE)}"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}"),
            (self.ffn_importance in FFN_IMPORTANCE, f"ffn importance must be one of {', '.join(FFN_IMPORTANCE)}"),
            (
                self.mode == "mask" or not self.layer_fracs,
                "a reshape removes the same share of query heads in every layer: no per-layer fraction",
            ),
            (self.importance_quant in (None, "nf4"), "the importance quantisation must be nf4"),
            (self.ridge_rel >= 0 and self.ffn_ridge_rel >= 0, "the relative ridge must be >= 0"),
            (self.max_tokens >= 2 and self.batch_size >= 1, "tokens per sample must be >= 2 and the batch size >= 1"),
            (self.calib_tokens is None or self.calib_tokens >= 2, "the calibration token budget must be >= 2"),
            (self.calib is None or self.calib_dataset is None, "give a calibration file or a dataset, not both"),
            (self.calib is None or self.calib.strip() != "", "the calibration file's name is empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise SurgeonError(message)
        if self.calib_dataset is not None:  # '' once meant the bundled corpus, silently
            from surgeon.runtime.corpus import parse_dataset_spec  # deferred: the CLI's import stays light

            parse_dataset_spec(self.calib_dataset)


PRUNE_DEFAULTS = PruneOptions()
