"""The architecture as checked rules: `lint-imports` holds the contracts in .importlinter
(the torch boundary, the core never importing the TUI, the layers), and each contract is
shown to break on the import it forbids, so a contract that matched nothing would fail here.

lint-imports runs on a copy of the package laid out as a wheel installs it, tui/ as
surgeon/tui: grimp finds modules by walking the package's folder, and in the editable
install tui/ is mapped in from outside surgeon/, where grimp would never see an import of
it. The run-time counterparts (`surgeon diff` leaves torch out of sys.modules) are in
tests/cli/test_cli.py.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")

CONFIG = ROOT / ".importlinter"
# Modules that may import anything: the commands (`surgeon tui` opens the TUI) and `python -m surgeon`.
OUTSIDE_THE_CORE = {"cli", "__main__", "__init__"}


def wheel_layout(folder: Path) -> Path:
    """surgeon/ and tui/ copied into FOLDER as a wheel installs them (tui/ as surgeon/tui)."""
    skip = shutil.ignore_patterns("__pycache__", "_data")
    shutil.copytree(ROOT / "surgeon", folder / "surgeon", ignore=skip)
    shutil.copytree(ROOT / "tui", folder / "surgeon" / "tui", ignore=skip)
    return folder / "surgeon"


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    """lint-imports over the package in FOLDER, which shadows the editable install."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [*command, "--config", str(CONFIG), "--no-cache"], cwd=folder, env=env, capture_output=True, text=True
    )


def test_the_contracts_hold(tmp_path):
    wheel_layout(tmp_path)
    result = lint_imports(tmp_path)
    contracts = (ROOT / ".importlinter").read_text().count("[importlinter:contract:")
    assert result.returncode == 0 and f"{contracts} kept, 0 broken" in result.stdout, (
        result.stdout[-3000:] + result.stderr
    )


@pytest.mark.parametrize(
    ("module", "code", "broken"),
    [
        # a deferred import counts: grimp reads function bodies too
        ("diff/report.py", "def _late():\n    import torch\n", "surgeon.diff.report -> torch"),
        ("recover/verify.py", "import transformers\n", "surgeon.recover.verify -> transformers"),
        (
            "recover/plan.py",
            "def _late():\n    from surgeon.tui.views import plan_text\n",
            "surgeon.recover.plan -> surgeon.tui.views",
        ),
        ("format/dtypes.py", "from surgeon.model import names\n", "surgeon.format.dtypes -> surgeon.model.names"),
    ],
)
def test_each_contract_breaks_on_what_it_forbids(tmp_path, module, code, broken):
    package = wheel_layout(tmp_path)
    with open(package / module, "a") as handle:
        handle.write("\n\n" + code)
    result = lint_imports(tmp_path)
    assert result.returncode == 1 and broken in result.stdout, result.stdout[-3000:] + result.stderr


def test_every_core_module_is_kept_from_the_tui():
    """A new top-level module or subpackage of surgeon is checked, not forgotten."""
    config = configparser.ConfigParser()
    config.read(CONFIG)
    sources = set(config["importlinter:contract:core-never-imports-the-tui"]["source_modules"].split())
    core = {
        f"surgeon.{path.stem}"
        for path in (ROOT / "surgeon").iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists()) and path.stem not in OUTSIDE_THE_CORE
    }
    assert sources == core
