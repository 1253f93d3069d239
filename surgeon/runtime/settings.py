"""How a model is run: the device, dtype, tokenizer and weight precision that every engine
running a model (prune, eval, the canary) takes as one frozen record, instead of four
keyword sets that drifted apart (issue 18).

Torch-free, as every options module: the CLI builds its --device, --dtype, --tokenizer and
--quant from these fields (surgeon.cli.options flattens a nested record into the same
flags) and the light install imports it. The values are checked where a model is loaded:
surgeon.runtime.device.resolve_run turns them into a torch device and dtype, one line for a
bad one before any loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from surgeon.errors import SurgeonError
from surgeon.options import option

Quant = Literal["nf4"]
QUANTS: tuple[str, ...] = get_args(Quant)


@dataclass(frozen=True)
class RunSettings:
    device: str = option("auto", "auto, cuda, cuda:N or cpu.")
    dtype: str = option("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32.")
    tokenizer: str | None = option(None, "Tokenizer folder (default: BASE's own).", path="any")
    # The precision of the weights for the whole run: None keeps the checkpoint's weights in
    # `dtype`; nf4 loads them through bitsandbytes, where the engine can run so (the canary's
    # whole model; not the canary composed in memory, whose tensors are swapped in full
    # precision, and not prune or eval, which stream one layer at a time in `dtype`). Prune's
    # own importance_quant is another thing: only the loo-nll scores are computed on nf4
    # weights, while the layer stream and the heal stay in `dtype`, so it stays a prune option.
    quant: Quant | None = option(None, "Load through bitsandbytes nf4.")

    def validate(self) -> None:
        if self.quant is not None and self.quant not in QUANTS:
            raise SurgeonError(f"the weights' quantisation must be one of {', '.join(QUANTS)}")

    def tokenizer_dir(self, base_root: Path) -> Path:
        """The tokenizer folder: the one given, or the base checkpoint's own."""
        return Path(self.tokenizer) if self.tokenizer else Path(base_root)
