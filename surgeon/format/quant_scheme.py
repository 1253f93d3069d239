"""Which quantization a safetensors checkpoint declares: config.json's `quantization_config`
(and ModelOpt's `hf_quant_config.json`), read into one QuantScheme.

Three declarations are understood, each as its own exporter and loader read it:
- ModelOpt (`quant_method: modelopt`, or hf_quant_config.json's `quantization` block): a
  `quant_algo` (NVFP4, W4A16_NVFP4, FP8, FP8_PER_CHANNEL_PER_TOKEN, FP8_PB_WO, or
  MIXED_PRECISION with per-layer algos) and `ignore` / `exclude_modules`, wildcards matched
  against the whole module name (vLLM's modelopt.py: `*` -> `.*`, fullmatch).
- compressed-tensors (`quant_method: compressed-tensors`): a `format` at the top and per
  config group; `ignore` entries are module names or `re:` regexes (compressed_tensors.utils.
  match.match_name; class names such as `Linear` match no module name and are skipped).
- Hugging Face fine-grained FP8 (`quant_method: fp8`, DeepSeek-V3 style): `weight_block_size`,
  `modules_to_not_convert` matched as substrings of the module name (transformers' fp8).

The scheme decides which layouts may appear; which tensors are quantized is read from the
tensors themselves (quantized.py), and the ignore list is checked against them.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.jsonfile import read_json_object
from surgeon.text import shown

HF_QUANT_CONFIG = "hf_quant_config.json"  # ModelOpt's own file beside config.json

# The two weight layouts surgeon decodes.
NVFP4 = "nvfp4"
FP8 = "fp8"

MODELOPT_ALGOS = {
    "NVFP4": NVFP4,
    "W4A16_NVFP4": NVFP4,  # weight-only NVFP4: the same weight tensors, no input_scale
    "FP8": FP8,
    "FP8_PER_CHANNEL_PER_TOKEN": FP8,
    "FP8_PB_WO": FP8,  # per-block weight-only
}
CT_FORMATS = {
    "nvfp4-pack-quantized": NVFP4,
    "float-quantized": FP8,
    "naive-quantized": FP8,  # weights in their quantized dtype; F8_E4M3 ones decode as FP8
    "dense": None,  # stored unquantized: nothing to decode
}
DEFAULT_FP8_BLOCK = (128, 128)  # DeepSeek-V3's weight_block_size, transformers' fp8 default


@dataclass(frozen=True)
class QuantScheme:
    method: str  # "modelopt", "compressed-tensors" or "fp8"
    layouts: frozenset[str]  # which of NVFP4 / FP8 the declaration allows
    where: str  # the file and key it was read from, for messages
    ignore: tuple[str, ...] = ()
    # FP8 scale blocks the declaration names, (rows, cols): block structures, group sizes
    fp8_blocks: tuple[tuple[int, int], ...] = ()
    # ModelOpt MIXED_PRECISION: module name -> its layout
    per_layer: dict[str, str] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()  # declared formats surgeon does not decode

    def ignores(self, module: str) -> bool:
        """Whether the declaration leaves `module` unquantized, as its own loader matches names."""
        return any(_matches(self.method, pattern, module) for pattern in self.ignore)


# The quant_method values whose weights surgeon decodes (quantized.py).
DECODED_METHODS = ("modelopt", "compressed-tensors", "fp8")


def decoded_scheme(ckpt: Checkpoint) -> QuantScheme | None:
    """quantization_scheme, or None where the declared method is one surgeon does not decode
    (bitsandbytes, GPTQ, AWQ, ...): such a checkpoint is compared byte for byte, as before
    surgeon read any quantization, instead of refused."""
    declared = (ckpt.config or {}).get("quantization_config")
    if isinstance(declared, dict) and declared.get("quant_method") not in DECODED_METHODS:
        return None
    return quantization_scheme(ckpt)


def quantization_scheme(ckpt: Checkpoint) -> QuantScheme | None:
    """The declared quantization of `ckpt`, or None where it declares none."""
    config = ckpt.config or {}
    declared = config.get("quantization_config")
    side = _hf_quant_config(ckpt)
    if declared is None and side is None:
        return None
    where = f"{ckpt.root / 'config.json'}: quantization_config"
    if declared is None:
        return _modelopt({}, side, f"{ckpt.root / HF_QUANT_CONFIG}")
    if not isinstance(declared, dict):
        raise SurgeonError(f"{where} is {shown(declared)}, not an object")
    method = declared.get("quant_method")
    if method == "modelopt":
        return _modelopt(declared, side, where)
    if method == "compressed-tensors":
        return _compressed_tensors(declared, where)
    if method == "fp8":
        return _hf_fp8(declared, where)
    raise SurgeonError(
        f"{where}: quant_method {shown(method)} is not one surgeon decodes ({', '.join(DECODED_METHODS)})"
    )


def _hf_quant_config(ckpt: Checkpoint) -> dict | None:
    """hf_quant_config.json's `quantization` block, where the folder has that file."""
    path = ckpt.root / HF_QUANT_CONFIG
    if ckpt.file is not None or not path.exists():
        return None
    block = read_json_object(path).get("quantization")
    if not isinstance(block, dict):
        raise SurgeonError(f"{path}: has no `quantization` object")
    return block


def _modelopt(declared: dict, side: dict | None, where: str) -> QuantScheme:
    side = side or {}
    algo = declared.get("quant_algo", side.get("quant_algo"))
    ignore = declared.get("ignore", side.get("exclude_modules"))
    per_layer: dict[str, str] = {}
    if algo == "MIXED_PRECISION":
        layers = declared.get("quantized_layers", side.get("quantized_layers"))
        if not isinstance(layers, dict):
            raise SurgeonError(f"{where}: MIXED_PRECISION without a quantized_layers object")
        per_layer = {str(name): _modelopt_layout(layer, where) for name, layer in layers.items()}
        layouts = frozenset(per_layer.values())
    else:
        layouts = frozenset({_modelopt_layout({"quant_algo": algo}, where)})
    return QuantScheme("modelopt", layouts, where, _names(ignore, where, "ignore"), per_layer=per_layer)


def _modelopt_layout(layer: object, where: str) -> str:
    algo = layer.get("quant_algo") if isinstance(layer, dict) else None
    layout = MODELOPT_ALGOS.get(algo) if isinstance(algo, str) else None
    if layout is None:
        known = ", ".join(MODELOPT_ALGOS)
        raise SurgeonError(f"{where}: quant_algo {shown(algo)} is not one surgeon decodes ({known})")
    return layout


def _compressed_tensors(declared: dict, where: str) -> QuantScheme:
    groups = declared.get("config_groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise SurgeonError(f"{where}: config_groups is {shown(groups)}, not an object of objects")
    named = [declared.get("format"), *(group.get("format") for group in groups.values())]
    if not all(f is None or isinstance(f, str) for f in named):
        raise SurgeonError(f"{where}: a format is {shown(named)}, not a name")
    # "mixed-precision" at the top says each group names its own
    formats = {f for f in named if isinstance(f, str) and f != "mixed-precision"}
    sparsity = declared.get("sparsity_config")
    if isinstance(sparsity, dict) and sparsity.get("format") not in (None, "dense"):
        raise SurgeonError(f"{where}: sparsity format {shown(sparsity.get('format'))} is not one surgeon decodes")
    unknown = tuple(sorted(f for f in formats if f not in CT_FORMATS))
    layouts = frozenset(layout for f in formats if (layout := CT_FORMATS.get(f)) is not None)
    blocks = tuple(block for group in groups.values() if (block := _ct_block(group.get("weights"), where)))
    ignore = _names(declared.get("ignore"), where, "ignore")
    for pattern in ignore:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise SurgeonError(f"{where}: ignore pattern {shown(pattern)} is not a valid regex ({exc})") from None
    return QuantScheme("compressed-tensors", layouts, where, ignore, fp8_blocks=blocks, unknown=unknown)


def _ct_block(weights: object, where: str) -> tuple[int, int] | None:
    """The FP8 scale block a group's weights declare: block_structure, or (1, group_size)."""
    if not isinstance(weights, dict):
        return None
    if weights.get("strategy") == "block":
        return _pair(weights.get("block_structure"), f"{where}: block_structure")
    if weights.get("strategy") == "group" and weights.get("num_bits") == 8:
        size = weights.get("group_size")
        if not isinstance(size, int) or not _positive(size):
            raise SurgeonError(f"{where}: group_size is {shown(size)}, not a positive integer")
        return 1, size
    return None


def _hf_fp8(declared: dict, where: str) -> QuantScheme:
    size = declared.get("weight_block_size")
    block = DEFAULT_FP8_BLOCK if size is None else _pair(size, f"{where}: weight_block_size")
    ignore = _names(declared.get("modules_to_not_convert"), where, "modules_to_not_convert")
    return QuantScheme("fp8", frozenset({FP8}), where, ignore, fp8_blocks=(block,))


def _pair(value: object, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(map(_positive, value))):
        raise SurgeonError(f"{where} is {shown(value)}, not two positive integers")
    return value[0], value[1]


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _names(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SurgeonError(f"{where}: {key} is {shown(value)}, not a list of names")
    return tuple(value)


def _matches(method: str, pattern: str, module: str) -> bool:
    if method == "modelopt":
        # vLLM: re.escape(pattern).replace("\\*", ".*") fullmatched, i.e. `*` only (no `?`/`[`)
        return fnmatch.fnmatchcase(module, pattern.replace("[", "[[]").replace("?", "[?]"))
    if method == "fp8":
        return pattern in module
    if pattern.startswith("re:"):  # compiled once when the scheme was read: valid
        return re.match(pattern[3:], module) is not None
    return pattern == module
