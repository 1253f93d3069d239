"""A GGUF quant named by its Hub repo, from the local Hugging Face cache: `owner/repo` where
the repo holds one GGUF model, `owner/repo:Q4_K_M` where it holds several.

The tag is what llama.cpp (`llama-cli -hf owner/repo:Q4_K_M`) and Ollama (`ollama run
hf.co/owner/repo:Q4_K_M`) take: the quant type, matched without regard to case against the
names of the repo's .gguf files, as a whole word of the name (`Q4_K` is not `Q4_K_M`, `Q4_0`
not `IQ4_0`). A split set is one model, named by its first part; mmproj files (a vision tower,
llama.cpp's separate GGUF) are never the model. Nothing is downloaded here: a repo that is not
in the cache is one line saying how to fetch it.
"""

from __future__ import annotations

import re
from pathlib import Path

from surgeon.errors import SurgeonError, first_line
from surgeon.format.kinds import SPLIT_NAME
from surgeon.text import inert

TAGGED = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<tag>[\w.-]+)$")
REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A quant type as a file name spells it: Q4_K_M, IQ2_XXS, Q8_0, F16, BF16, MXFP4, TQ1_0
QUANT_WORD = re.compile(r"(?i)^(?:i?q\d\w*|tq\d_\d|b?f16|f32|mxfp4\w*|nvfp4)$")


def hub_gguf(spec: str, revision: str | None) -> Path | None:
    """The first file of the GGUF model `spec` names, or None where `spec` is no Hub id of a
    cached repo holding GGUF files and no safetensors (a path, or a safetensors repo: the
    other routes take those). A tag that matches nothing, or several models and no tag: one
    SurgeonError listing the tags."""
    tagged = TAGGED.match(spec)
    repo, tag = (tagged["repo"], tagged["tag"]) if tagged else (spec, None)
    path = Path(spec).expanduser()
    if not REPO.match(repo) or (tag is None and (path.exists() or path.parent.is_dir())):
        return None  # a path, or a mistyped one (`fixtures/prunedd`), not an org on the Hub
    folder = _cached(repo, revision)
    models = _models(folder) if folder is not None else []
    if tag is None:
        if not models or any(folder.rglob("*.safetensors")):  # type: ignore[union-attr]
            return None
        return _only(repo, models)
    if folder is None or not models:
        raise SurgeonError(
            f"{spec}: no GGUF of {repo} in the local Hugging Face cache; fetch it first: "
            f"hf download {repo} --include '*{tag}*.gguf'"
        )
    return _tagged(repo, tag, models)


def _cached(repo: str, revision: str | None) -> Path | None:
    """The repo's snapshot folder in the local cache, or None; never the network."""
    from huggingface_hub import snapshot_download  # 300 ms to import: only a repo id pays it
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    except ValueError as exc:  # HFValidationError: a name the Hub refuses
        raise SurgeonError(f"{repo}: not a valid Hub repo id ({first_line(exc)})") from None


def _models(folder: Path) -> list[Path]:
    """Each GGUF model of the snapshot (subfolders too: repos keep big quants in one each):
    a lone file or a split set's first part; mmproj files left out."""
    found = []
    for path in sorted(folder.rglob("*.gguf")):
        split = SPLIT_NAME.fullmatch(path.name)
        if path.name.lower().startswith("mmproj") or (split and int(split["no"]) != 1):
            continue
        found.append(path)
    return found


def model_tag(path: Path) -> str:
    """The quant word of a model's file name (`tiny-Q4_K_M.gguf` -> `Q4_K_M`), else its name."""
    split = SPLIT_NAME.fullmatch(path.name)
    stem = split["prefix"] if split else path.stem
    words = re.split(r"[-.]", stem)
    return next((w for w in reversed(words) if QUANT_WORD.match(w)), stem)


def _only(repo: str, models: list[Path]) -> Path:
    if len(models) > 1:
        tags = ", ".join(inert(model_tag(m)) for m in models)
        raise SurgeonError(f"{repo}: holds {len(models)} GGUF models; name one as {repo}:TAG, TAG one of {tags}")
    return models[0]


def _tagged(repo: str, tag: str, models: list[Path]) -> Path:
    word = re.compile(rf"(?i)(?<![a-z0-9]){re.escape(tag)}(?![a-z0-9_])")
    matching = [m for m in models if word.search(m.name)]
    tags = ", ".join(inert(model_tag(m)) for m in models)
    if not matching:
        raise SurgeonError(f"{repo}:{inert(tag)}: no GGUF of {repo} matches {inert(tag)!r}; its tags: {tags}")
    if len(matching) > 1:
        names = ", ".join(inert(m.name) for m in matching)
        raise SurgeonError(f"{repo}:{inert(tag)}: matches {len(matching)} GGUF models ({names}); name a longer tag")
    return matching[0]
