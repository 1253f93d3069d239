"""surgeon: checkpoint surgery and diff toolkit for large language models.

The engine is importable without Textual, and its cheap paths (diff, inspect) without torch.
"""

from surgeon.checkpoint import Checkpoint, open_checkpoint
from surgeon.diff import DiffOptions, DiffReport, diff_checkpoints
from surgeon.errors import SurgeonError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "DiffOptions", "DiffReport", "SurgeonError", "diff_checkpoints", "open_checkpoint"]
