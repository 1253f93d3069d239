"""What transformers itself says of a reshaped config: a family may check more than the
head counts (Llama's config wants hidden_size to be a multiple of num_attention_heads, even
with head_dim stated). Its own module, apart from surgeon.prune.reshape, which stays
torch- and transformers-free; the CLI passes this check in."""

from __future__ import annotations

from surgeon.errors import first_line


def transformers_problem(config: dict) -> str | None:
    """Why transformers' config class for `config`'s model_type refuses it, or None (also
    None for a model_type this transformers does not know: nothing to ask)."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    try:
        CONFIG_MAPPING[model_type].from_dict(dict(config))
    except Exception as exc:  # a config class's checks raise what they like (StrictDataclass*Error, ValueError)
        return first_line(exc.__cause__ if exc.__cause__ is not None else exc)
    return None
