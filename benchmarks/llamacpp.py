"""llama.cpp's own quantizer, built from the llama-cpp-python 0.3.36 sdist, and real quants made with it.

Run:
  python benchmarks/llamacpp.py build                       # once: about 10 min on 2 cores
  python benchmarks/llamacpp.py quants [--model DIR] [--out DIR] [--types Q8_0 Q4_0 Q4_K_M]

`build` unpacks the sdist (a path in $LLAMA_CPP_SDIST, else /tmp/lcp/, else `pip download
llama-cpp-python==0.3.36 --no-deps --no-binary :all:`) into benchmarks/_data/llamacpp/ (git-ignored)
and builds, with CMake and Ninja, only `llama-quantize` and the shared `ggml-base` (which holds
`ggml_quantize_chunk`, what bench_quant_bounds.py calls through ctypes for the K-quants and IQ
types gguf-py cannot quantize). CPU only, no native tuning (-DGGML_NATIVE=OFF), so the bytes do
not depend on the building machine's instruction set. It skips what is already built.

`quants` converts a Hugging Face safetensors folder with the vendored `convert_hf_to_gguf.py`
(`--outtype f32`, with the vendored gguf-py first on PYTHONPATH, so converter and gguf-py are
the same commit; it needs torch, transformers and sentencepiece: its Llama vocabulary tries
sentencepiece first and fails on a missing module, not only on a missing file) into OUT/<name>.F32.gguf, then runs
`llama-quantize` to each type: OUT/<name>.<TYPE>.gguf. Defaults: the SmolLM2-135M-Instruct
folder that benchmarks/smollm2.py writes, into benchmarks/_data/quants/smollm2/.
No importance matrix: the quants are what `llama-quantize` makes without `--imatrix`.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VERSION = "0.3.36"
ROOT = HERE / "_data" / "llamacpp"
SRC = ROOT / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
BUILD = ROOT / "build"
QUANTIZE = BUILD / "bin" / "llama-quantize"
DEFAULT_MODEL = HERE / "_data" / "smollm2-135m-instruct"
DEFAULT_OUT = HERE / "_data" / "quants" / "smollm2"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",
    "-DGGML_OPENMP=OFF",
    "-DLLAMA_CURL=OFF",  # gone from this version's options; harmless where unknown
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
)
TARGETS = ("llama-quantize", "ggml-base")


def _sdist() -> Path:
    given = os.environ.get("LLAMA_CPP_SDIST")
    candidates = [Path(given)] if given else []
    candidates += [Path("/tmp/lcp") / f"llama_cpp_python-{VERSION}.tar.gz", ROOT / f"llama_cpp_python-{VERSION}.tar.gz"]
    for path in candidates:
        if path.is_file():
            return path
    ROOT.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"llama-cpp-python=={VERSION}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(ROOT),
        ],
        check=True,
    )
    return ROOT / f"llama_cpp_python-{VERSION}.tar.gz"


def ggml_base_library() -> Path | None:
    """The built shared libggml-base, or None when `build` has not run."""
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        for folder in (BUILD / "bin", BUILD / "ggml" / "src"):
            if (folder / name).is_file():
                return folder / name
    return None


# The llama.cpp commit the 0.3.36 sdist vendors: its .git/modules/vendor/llama.cpp/HEAD.
VENDORED_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


class GGML:
    """ggml's own quantizer, through ctypes on the built libggml-base: `quantize` returns the
    bytes `ggml_quantize_chunk` writes, what `llama-quantize` writes for the same tensor, type
    and importance matrix (llama-quantize calls the same function, split over threads by rows)."""

    def __init__(self, library: Path) -> None:
        lib = ctypes.CDLL(str(library))
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        lib.ggml_quantize_init.restype = None
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib = lib

    def requires_imatrix(self, qtype: int) -> bool:
        return bool(self.lib.ggml_quantize_requires_imatrix(qtype))

    def quantize(self, w: np.ndarray, qtype: int, imatrix: np.ndarray | None = None) -> np.ndarray:
        """A 2-d float32 array quantized row by row into `qtype` (a GGMLQuantizationType value), as uint8 rows."""
        src = np.ascontiguousarray(w, dtype=np.float32)
        rows, n_per_row = src.shape
        row_size = self.lib.ggml_row_size(qtype, n_per_row)
        dst = np.zeros((rows, row_size), dtype=np.uint8)
        weights = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        if weights is not None and weights.shape != (n_per_row,):
            raise ValueError(f"imatrix of {weights.shape} for rows of {n_per_row}")
        self.lib.ggml_quantize_init(qtype)
        written = self.lib.ggml_quantize_chunk(
            qtype,
            src.ctypes.data,
            dst.ctypes.data,
            0,
            rows,
            n_per_row,
            None if weights is None else weights.ctypes.data,
        )
        if written != dst.size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {dst.size}")
        return dst


def ggml() -> GGML | None:
    """ggml's quantizer from the built library, or None when `build` has not run."""
    library = ggml_base_library()
    return None if library is None else GGML(library)


def build() -> Path:
    """Unpack and build once; return the llama-quantize binary."""
    if QUANTIZE.is_file() and ggml_base_library() is not None:
        return QUANTIZE
    if not (SRC / "CMakeLists.txt").is_file():
        ROOT.mkdir(parents=True, exist_ok=True)
        with tarfile.open(_sdist()) as tar:
            tar.extractall(ROOT, filter="data")
    if not (BUILD / "build.ninja").is_file():
        subprocess.run(["cmake", "-S", str(SRC), "-B", str(BUILD), "-G", "Ninja", *CMAKE_FLAGS], check=True)
    targets = [arg for target in TARGETS for arg in ("--target", target)]
    subprocess.run(["nice", "-n", "10", "cmake", "--build", str(BUILD), "-j2", *targets], check=True)
    return QUANTIZE


def make_quants(
    checkpoint_folder: Path,
    out_folder: Path,
    types: Sequence[str] = ("Q8_0", "Q4_0", "Q4_K_M"),
    name: str | None = None,
) -> dict[str, Path]:
    """Convert `checkpoint_folder` to an F32 GGUF with llama.cpp's converter, then quantize it to each type."""
    quantize = build()
    name = name or checkpoint_folder.resolve().name.split("-")[0].lower()
    out_folder.mkdir(parents=True, exist_ok=True)
    f32 = out_folder / f"{name}.F32.gguf"
    if not f32.is_file():
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
        partial = f32.with_suffix(".partial")
        subprocess.run(
            [
                sys.executable,
                str(SRC / "convert_hf_to_gguf.py"),
                str(checkpoint_folder),
                "--outtype",
                "f32",
                "--outfile",
                str(partial),
            ],
            check=True,
            env=env,
        )
        partial.replace(f32)
    made = {"F32": f32}
    for qtype in types:
        target = out_folder / f"{name}.{qtype}.gguf"
        if not target.is_file():
            partial = target.with_suffix(".partial")
            subprocess.run(["nice", "-n", "10", str(quantize), str(f32), str(partial), qtype, "2"], check=True)
            partial.replace(target)
        made[qtype] = target
    return made


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="unpack the sdist and build llama-quantize and libggml-base")
    quants = sub.add_parser("quants", help="convert a safetensors folder to GGUF and quantize it")
    quants.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    quants.add_argument("--out", type=Path, default=DEFAULT_OUT)
    quants.add_argument("--types", nargs="+", default=["Q8_0", "Q4_0", "Q4_K_M"])
    quants.add_argument("--name", default=None, help="file name stem (default: the folder's first word)")
    args = parser.parse_args(argv)
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        print("llamacpp: needs cmake and ninja on PATH", file=sys.stderr)
        return 1
    if args.command == "build":
        print(build())
        print(ggml_base_library())
        return 0
    for qtype, path in make_quants(args.model, args.out, args.types, args.name).items():
        print(f"{qtype}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
