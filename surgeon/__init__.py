"""surgeon: checkpoint surgery and diff toolkit for large language models.

The engine is importable without Textual, and its cheap paths (diff, inspect) without torch.
The public names load on first use, so a command pays only for the modules it runs.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
# The name on the package index (`pip install checkpoint-surgeon`); `surgeon` there is an
# unrelated find/replace library of 2014. The command and the import stay `surgeon`.
DISTRIBUTION = "checkpoint-surgeon"

_EXPORTS = {
    "Checkpoint": "surgeon.format.checkpoint",
    "open_checkpoint": "surgeon.format.checkpoint",
    "DiffOptions": "surgeon.diff.engine",
    "DiffReport": "surgeon.diff.engine",
    "diff_checkpoints": "surgeon.diff.engine",
    "SurgeonError": "surgeon.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'surgeon' has no attribute {name!r}")
