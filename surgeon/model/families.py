"""Model families: each decoder layer's attention, named and sized, per family.

Torch-free: from config.json and the checkpoint's tensor names and shapes only. The prune
engine uses it to know which tensors to read, capture, heal and zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.model.geometry import check_config, config_int, layer_geometry, shown, text_config
from surgeon.model.names import parse_name

# Text model_type of each supported family; multimodal wrappers map to their text model.
FAMILIES = {
    "gemma4": "gemma4_text",
    "gemma4_text": "gemma4_text",
    "gemma3": "gemma3_text",
    "gemma3_text": "gemma3_text",
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}


@dataclass(frozen=True)
class LayerSpec:
    index: int
    prefix: str  # checkpoint name prefix of the layer, e.g. "model.language_model.layers.3."
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_type: str | None
    q_proj: str
    k_proj: str
    v_proj: str | None  # None where keys double as values (Gemma 4 attention_k_eq_v)
    o_proj: str
    q_bias: str | None  # Qwen2 has q/k/v biases; a pruned head's q bias is zeroed too

    @property
    def group_size(self) -> int:
        """Query heads per kv head (GQA)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ModelLayout:
    family: str  # text model_type, e.g. "gemma4_text"
    config: dict  # the text config
    stack: str  # checkpoint prefix of the layer stack, e.g. "model.layers"
    text_prefix: str  # checkpoint prefix of the text model, e.g. "model." or "model.language_model."
    layers: list[LayerSpec]

    def module_name(self, tensor: str) -> str | None:
        """The tensor's name inside the text-only *ForCausalLM module, or None if not in it."""
        if tensor.startswith(self.stack + "."):
            return "model.layers." + tensor[len(self.stack) + 1 :]
        if tensor.startswith(self.text_prefix):
            return "model." + tensor[len(self.text_prefix) :]
        if tensor.startswith("lm_head."):
            return tensor
        return None


def config_path(ckpt: Checkpoint) -> str:
    """The config file's name in messages: the file itself, next to the shards."""
    return str(ckpt.root / "config.json")


def checked_config(ckpt: Checkpoint) -> dict:
    """The checkpoint's config.json (or {}), every value surgeon reads checked (geometry.check_config)."""
    check_config(ckpt.config, config_path(ckpt))
    return ckpt.config or {}


def model_layout(ckpt: Checkpoint) -> ModelLayout:
    """The checkpoint's family, text config, layer stack and each layer's attention tensors."""
    config = checked_config(ckpt)
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type)
    if family is None:
        supported = ", ".join(sorted({k for k in FAMILIES if not k.endswith("_text")}))
        raise SurgeonError(
            f"{ckpt.source}: model_type {shown(model_type)} is not supported for pruning (supported: {supported})"
        )
    stack = _decoder_stack(ckpt)
    if stack is None:
        raise SurgeonError(f"{ckpt.source}: no decoder layers found in the tensor names")
    count = check_layer_count(ckpt, stack)
    if count is None:
        raise SurgeonError(f"{config_path(ckpt)}: num_hidden_layers is missing")
    layers = [_layer_spec(ckpt, config, stack, i) for i in range(count)]
    text_prefix = stack[: -len("layers")]
    return ModelLayout(family, text_config(config, stack), stack, text_prefix, layers)


def check_layer_count(ckpt: Checkpoint, stack: str | None = None) -> int | None:
    """num_hidden_layers, checked to be the checkpoint's own layer count: transformers
    builds that many layers, so fewer would leave layers out unseen and more would build
    layers with random weights (or, with 10**12, exhaust memory). None where the config
    does not say or no decoder stack is found (the canary leaves those to transformers)."""
    stack = stack or _decoder_stack(ckpt)
    count = config_int(text_config(ckpt.config, stack), "num_hidden_layers")
    if stack is None or count is None:
        return count
    last = max(p.layer for p in map(parse_name, ckpt.tensors) if p.stack == stack)
    if count != last + 1:
        raise SurgeonError(f"{config_path(ckpt)}: num_hidden_layers is {count} but the checkpoint has layers 0-{last}")
    return count


def _decoder_stack(ckpt: Checkpoint) -> str | None:
    counts: dict[str, int] = {}
    for name in ckpt.tensors:
        parsed = parse_name(name)
        if parsed.stack and "vision" not in parsed.stack and "audio" not in parsed.stack:
            counts[parsed.stack] = counts.get(parsed.stack, 0) + 1
    return max(counts, key=counts.get) if counts else None


def _layer_spec(ckpt: Checkpoint, config: dict, stack: str, index: int) -> LayerSpec:
    prefix = f"{stack}.{index}."
    attn = prefix + "self_attn."
    names = {p: f"{attn}{p}_proj.weight" for p in "qkvo"}
    for proj in "qko":
        if names[proj] not in ckpt.tensors:
            raise SurgeonError(f"{ckpt.source}: layer {index} has no {names[proj]}")
    family_tensors = {n[len(prefix) :]: t for n, t in ckpt.tensors.items() if n.startswith(prefix)}
    geometry = layer_geometry(config, stack, index, family_tensors)
    if geometry is None or not geometry.num_kv_heads:
        raise SurgeonError(f"{ckpt.source}: cannot tell the attention geometry of layer {index}")
    q_bias = f"{attn}q_proj.bias"
    return LayerSpec(
        index=index,
        prefix=prefix,
        num_heads=geometry.num_heads,
        num_kv_heads=geometry.num_kv_heads,
        head_dim=geometry.head_dim,
        layer_type=geometry.layer_type,
        q_proj=names["q"],
        k_proj=names["k"],
        v_proj=names["v"] if names["v"] in ckpt.tensors else None,
        o_proj=names["o"],
        q_bias=q_bias if q_bias in ckpt.tensors else None,
    )
