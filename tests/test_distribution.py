"""The distribution's name: `pip install surgeon` installs an unrelated 2014 find/replace
library, so every install line surgeon prints or documents names `checkpoint-surgeon`."""

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from surgeon import DISTRIBUTION
from surgeon.errors import missing_extra

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_names_the_distribution_that_surgeon_names():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the other checks run on 3.10 too
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["name"] == DISTRIBUTION == "checkpoint-surgeon"
    assert project["scripts"] == {"surgeon": "surgeon.cli.main:main"}  # the command keeps its name
    extras = [req for reqs in project["optional-dependencies"].values() for req in reqs]
    self_refs = [req for req in extras if req.split("[")[0] in {"surgeon", DISTRIBUTION}]
    assert self_refs and all(req.startswith(f"{DISTRIBUTION}[") for req in self_refs)


def test_missing_extra_message_installs_this_distribution():
    exc = ModuleNotFoundError("No module named 'torch'", name="torch")
    message = str(missing_extra(exc, "surgeon prune"))
    assert f"pip install '{DISTRIBUTION}[prune]'" in message


def test_no_install_line_names_the_unrelated_surgeon_package():
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / ".ci").iterdir())]
    texts += sorted((ROOT / "surgeon").rglob("*.py")) + sorted((ROOT / "tui").rglob("*.py"))
    wrong = re.compile(r"pip install (?:-\S+ )*['\"]?surgeon(?:\[|['\"\s`]|$)", re.M)
    found = [
        f"{path.relative_to(ROOT)}: {m.group(0)}" for path in texts for m in wrong.finditer(path.read_text("utf-8"))
    ]
    assert not found


def test_version_is_read_from_the_installed_distribution():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "surgeon", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"surgeon, version {importlib.metadata.version(DISTRIBUTION)}"
