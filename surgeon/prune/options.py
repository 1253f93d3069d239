"""`surgeon prune`'s options, apart from the engine: the CLI reads their defaults without
importing torch (which `surgeon diff` must never load)."""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import SurgeonError

IMPORTANCE = ("recon", "norm", "loo-nll")


@dataclass(frozen=True)
class PruneOptions:
    prune_frac: float = 0.125
    layers: str = "all"  # "all" or ranges such as "0-3,7"
    layer_fracs: tuple[tuple[int, float], ...] = ()  # per-layer overrides of prune_frac
    importance: str = "recon"
    importance_quant: str | None = None  # "nf4": loo-nll on weights rounded to nf4
    heal: str = "lstsq"
    ridge_rel: float = 0.01
    propagate: str = "pruned"
    calib: str | None = None  # None: the corpus bundled in surgeon/_data/calibration
    calib_dataset: str | None = None  # NAME[:CONFIG][:SPLIT] of a Hugging Face dataset, instead of calib
    calib_tokens: int | None = None  # None: auto_token_budget(the widest pruned layer's width)
    max_tokens: int = 512  # per sample: long enough for attention to look far back
    calib_samples: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    offload_activations: bool = False
    tokenizer: str | None = None

    def validate(self) -> None:
        if not 0 <= self.prune_frac < 1 or any(not 0 <= f < 1 for _, f in self.layer_fracs):
            raise SurgeonError("the fraction of heads to prune must be in [0, 1)")
        checks = [
            (self.importance in IMPORTANCE, f"importance must be one of {', '.join(IMPORTANCE)}"),
            (self.heal in ("lstsq", "none"), "heal must be lstsq or none"),
            (self.propagate in ("pruned", "base"), "propagate must be pruned or base"),
            (self.importance_quant in (None, "nf4"), "the importance quantisation must be nf4"),
            (self.ridge_rel >= 0, "the relative ridge must be >= 0"),
            (self.max_tokens >= 2 and self.batch_size >= 1, "max tokens must be >= 2 and the batch size >= 1"),
            (self.calib_tokens is None or self.calib_tokens >= 2, "the calibration token budget must be >= 2"),
            (not (self.calib and self.calib_dataset), "give a calibration file or a dataset, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise SurgeonError(message)


PRUNE_DEFAULTS = PruneOptions()
