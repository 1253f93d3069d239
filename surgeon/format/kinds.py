"""Which format a path on the command line names, from its name and folder alone: nothing is
read and no format library is imported (gguf-py costs ~100 ms to import, which `surgeon diff`
of two safetensors folders must not pay)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# A split set's part, as llama.cpp's gguf-split names it
SPLIT_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf")


def names_gguf(spec: str | os.PathLike) -> bool:
    """`spec` names a GGUF model: a `.gguf` path (a file, or one that is missing, which the
    GGUF reader then reports), or a folder holding `.gguf` files and no `.safetensors` file
    (a Hub repo folder with both is a safetensors checkpoint, as before)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return any(path.glob("*.gguf")) and not any(path.glob("*.safetensors"))
    return path.suffix == ".gguf"


def gguf_inputs(spec: str | os.PathLike) -> list[Path]:
    """What an output must not be over: the file or folder named, and every .gguf file beside
    a file named (the other parts of a split set)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return [path, Path(os.path.realpath(path))]
    siblings = [p for p in path.parent.glob("*.gguf") if p.is_file()] if path.parent.is_dir() else []
    return [path, Path(os.path.realpath(path)), *siblings]
