"""Model families: each decoder layer's attention, named and sized, per family.

Torch-free: from config.json and the checkpoint's tensor names and shapes only. The prune
engine uses it to know which tensors to read, capture, heal and zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.model.geometry import check_config, config_int, layer_geometry, shown, text_config
from surgeon.model.names import main_stack, parse_name


@dataclass(frozen=True)
class FamilySpec:
    """What surgeon must know of one supported family, beyond what config.json and the
    tensor shapes say. Adding a family is one entry of FAMILIES (plus a tiny model in
    tests/tiny_models.py); the engine, the CLI's messages and the docs read it from here."""

    text_type: str  # the text model_type transformers builds (what the prune engine streams)
    wrappers: tuple[str, ...] = ()  # multimodal model_types whose text model this is
    k_eq_v: bool = False  # some layers have no v_proj: keys double as values (Gemma 4 attention_k_eq_v)
    q_bias: bool = False  # q/k/v carry biases (Qwen2): a pruned head's q bias rows are zeroed too
    q_norm: bool = False  # every layer has a per-head q_norm (its length splits q_proj where the config is silent)


FAMILIES: dict[str, FamilySpec] = {
    spec.text_type: spec
    for spec in (
        FamilySpec("gemma4_text", wrappers=("gemma4",), k_eq_v=True, q_norm=True),
        FamilySpec("gemma3_text", wrappers=("gemma3",), q_norm=True),
        FamilySpec("llama"),
        FamilySpec("mistral"),
        FamilySpec("qwen2", q_bias=True),
        FamilySpec("qwen3", q_norm=True),
    )
}
# model_type (text or multimodal wrapper) -> its family
FAMILY_OF_TYPE = {name: spec for spec in FAMILIES.values() for name in (spec.text_type, *spec.wrappers)}


def supported_types() -> str:
    """The model_types a user would name, for messages: wrappers rather than their text halves."""
    return ", ".join(sorted({(spec.wrappers or (spec.text_type,))[0] for spec in FAMILIES.values()}))


@dataclass(frozen=True)
class MlpSpec:
    """A layer's dense gated MLP, down_proj(act(gate_proj(x)) * up_proj(x)): FFN pruning
    removes channel j as gate and up row j and down column j."""

    gate_proj: str
    up_proj: str
    down_proj: str
    biases: tuple[str, ...]  # gate/up/down biases (Llama's mlp_bias): a removed channel's rows go too
    width: int  # channels, down_proj's input columns (Gemma 4's double-wide KV-shared layers: twice the config's)


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
    mlp: MlpSpec | None = None  # None: no dense gate/up/down MLP by those names
    experts: bool = False  # the layer has mixture-of-experts tensors (fused experts.gate_up_proj)

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
    family = FAMILY_OF_TYPE.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise SurgeonError(
            f"{ckpt.source}: model_type {shown(model_type)} is not supported for pruning "
            f"(supported: {supported_types()})"
        )
    stack = _decoder_stack(ckpt)
    if stack is None:
        raise SurgeonError(f"{ckpt.source}: no decoder layers found in the tensor names")
    count = check_layer_count(ckpt, stack)
    if count is None:
        raise SurgeonError(f"{config_path(ckpt)}: num_hidden_layers is missing")
    layers = [_layer_spec(ckpt, config, stack, i, family) for i in range(count)]
    text_prefix = stack[: -len("layers")]
    return ModelLayout(family.text_type, text_config(config, stack), stack, text_prefix, layers)


def check_layer_count(ckpt: Checkpoint, stack: str | None = None) -> int | None:
    """num_hidden_layers, checked to be the checkpoint's own layer count: transformers
    builds that many layers, so fewer would leave layers out unseen and more would build
    layers with random weights (or, with 10**12, exhaust memory). None where the config
    does not say or no decoder stack is found (the canary leaves those to transformers)."""
    stack = stack or _decoder_stack(ckpt)
    count = config_int(text_config(ckpt.config, stack), "num_hidden_layers")
    if stack is None or count is None:
        return count
    last = max(p.layer for p in map(parse_name, ckpt.tensors) if p.stack == stack and p.layer is not None)
    if count != last + 1:
        raise SurgeonError(f"{config_path(ckpt)}: num_hidden_layers is {count} but the checkpoint has layers 0-{last}")
    return count


def _decoder_stack(ckpt: Checkpoint) -> str | None:
    return main_stack((parse_name(name).stack for name in ckpt.tensors), text_only=True)


def _layer_spec(ckpt: Checkpoint, config: dict, stack: str, index: int, family: FamilySpec) -> LayerSpec:
    prefix = f"{stack}.{index}."
    attn = prefix + "self_attn."
    names = {p: f"{attn}{p}_proj.weight" for p in "qkvo"}
    q_bias = f"{attn}q_proj.bias"
    for name in _required(family, names, attn):  # what transformers would otherwise fill with random values
        if name not in ckpt.tensors:
            raise SurgeonError(f"{ckpt.source}: layer {index} has no {name}")
    family_tensors = {n[len(prefix) :]: t for n, t in ckpt.tensors.items() if n.startswith(prefix)}
    geometry = layer_geometry(config, stack, index, family_tensors)
    if geometry is None or not geometry.num_kv_heads:
        raise SurgeonError(f"{ckpt.source}: cannot tell the attention geometry of layer {index}")
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
        q_bias=q_bias if q_bias in ckpt.tensors else None,  # also Llama and Mistral with attention_bias
        mlp=_mlp_spec(ckpt, prefix),
        experts=any(name.startswith("experts.") or ".experts." in name for name in family_tensors),
    )


def _mlp_spec(ckpt: Checkpoint, prefix: str) -> MlpSpec | None:
    """The layer's gated MLP where its three weights are there and their shapes agree
    (gate and up: channels x hidden, down: hidden x channels), else None."""
    names = {p: f"{prefix}mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    infos = [ckpt.tensors.get(name) for name in names.values()]
    if any(info is None or len(info.shape) != 2 for info in infos):
        return None
    gate, up, down = (tuple(info.shape) for info in infos if info is not None)
    if gate != up or down != gate[::-1]:
        return None
    biases = tuple(n for p in ("gate", "up", "down") if (n := f"{prefix}mlp.{p}_proj.bias") in ckpt.tensors)
    return MlpSpec(names["gate"], names["up"], names["down"], biases, down[1])


def _required(family: FamilySpec, names: dict[str, str], attn: str) -> list[str]:
    """The attention tensors every layer of the family has: q, k, o, and v unless keys double
    as values; a bias for families that always have one; q_norm where the family has it."""
    required = [names[p] for p in ("qko" if family.k_eq_v else "qkvo")]
    required += [f"{attn}q_proj.bias"] if family.q_bias else []
    return required + ([f"{attn}q_norm.weight"] if family.q_norm else [])
