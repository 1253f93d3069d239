"""The data that ships inside the package, under surgeon/_data: the calibration and held-out
text, the canary prompts, and the demo's tiny trained model, its pruned candidate, its
training text and prompts.

Read through importlib.resources, so that a wheel, pipx or a plain `pip install` finds it
wherever the package landed; nothing at run time points into the repository's fixtures/.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def bundled_path(*parts: str) -> Path:
    """surgeon/_data/PARTS as a file-system path (checkpoints are opened, and mapped, by path;
    a zip import is not supported). A file missing from a broken installation is reported
    by whoever opens it, in its own words ("no such checkpoint")."""
    resource = importlib.resources.files("surgeon") / "_data"
    for part in parts:  # one name per step: Python 3.10's Traversable.joinpath takes only one
        resource = resource / part
    return Path(str(resource))
