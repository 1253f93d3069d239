"""No data loss: the output guard, exclusive creation, --force replacement, signals, files that
change while read, and environment errors (issue 9, sections 1 and 6)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgeon import atomic
from surgeon.cli.main import main
from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.writer import write_checkpoint
from tests.helpers import ROOT, sha

TRAINED = DEMO_MODEL
CANDIDATE = DEMO_CANDIDATE
Q0 = "model.layers.0.self_attn.q_proj.weight"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def leftovers(folder: Path) -> list[str]:
    """Hidden entries surgeon may leave: temporary outputs, old outputs moved aside, locks."""
    return sorted(p.name for p in folder.iterdir() if ".surgeon-" in p.name)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir())}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has it now (a reuse this soon is vanishingly rare)


def owned_name(output: str, kind: str, pid: int, start: int | None = None, space: str | None = None) -> str:
    """A temporary or aside name as another process would have made it."""
    space = space or atomic._space()
    start = atomic._start_time(pid) if start is None else start
    return f".{output}.surgeon-{kind}-{space}-{pid}-{start}-0badc0de"


@pytest.fixture(params=["renameat2", "fallback"])
def renames(request, monkeypatch):
    """Each exclusivity test runs with renameat2 and as on a system without it (another OS,
    an old kernel, NFS), where link() and the lock file take over."""
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "renameat2", lambda *args: False)
    return request.param


# ---------------------------------------------------------------------------- the guard


@pytest.fixture
def linked_inputs(tmp_path):
    """inputs/{base,candidate}, and `via` linking to inputs/: via/base IS the base."""
    inputs = tmp_path / "inputs"
    shutil.copytree(TRAINED, inputs / "base")
    shutil.copytree(CANDIDATE, inputs / "candidate")
    (tmp_path / "via").symlink_to(inputs)
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ["salvage", "{in}/candidate", "--base", "{in}/base", "--keep", "0", "-o", "{via}/base", "--force"],
        ["salvage", "{in}/candidate", "--base", "{in}/base", "--keep", "0", "-o", "{via}/candidate", "--force"],
        ["salvage", "{in}/candidate", "--base", "{in}/base", "--keep", "0", "-o", "{via}/base/..", "--force"],
        ["salvage", "{in}/candidate", "--base", "{in}/base", "--keep", "0", "-o", "{via}/base/sub", "--force"],
        ["prune", "{in}/base", "-o", "{via}/base", "--force", "-q"],
        ["diff", "{in}/base", "{in}/candidate", "--json", "-o", "{via}/base/diff.json", "--force"],
        ["inspect", "{in}/base", "--json", "-o", "{via}/base/model.safetensors.index.json", "--force"],
    ],
    ids=[
        "salvage-over-base",
        "salvage-over-candidate",
        "salvage-over-parent",
        "salvage-inside",
        "prune",
        "diff",
        "inspect",
    ],
)
def test_an_output_reached_through_a_linked_folder_is_refused(linked_inputs, args):
    before = {name: hashes(linked_inputs / "inputs" / name) for name in ("base", "candidate")}
    paths = {"in": linked_inputs / "inputs", "via": linked_inputs / "via"}
    result = invoke(*[a.format(**paths) for a in args])
    assert result.exit_code == 2, result.output
    assert "refusing to write" in result.stderr and "input checkpoint" in result.stderr
    assert result.stderr.count("\n") == 1
    assert {name: hashes(linked_inputs / "inputs" / name) for name in ("base", "candidate")} == before
    assert leftovers(linked_inputs / "inputs") == []


def test_the_tui_write_and_prune_use_the_same_guard(linked_inputs):
    from surgeon.tui.panes import prune_request

    from surgeon.format.writer import check_output_path

    base = linked_inputs / "inputs" / "base"
    ckpts = [open_checkpoint(base), open_checkpoint(linked_inputs / "inputs" / "candidate")]
    with pytest.raises(SurgeonError, match="refusing to write over the input checkpoint"):
        check_output_path(linked_inputs / "via" / "base", ckpts, force=True)  # the write dialog's check
    form = {"fraction": "0.125", "layers": "0", "importance": "recon", "heal": "lstsq"}
    with pytest.raises(SurgeonError, match="refusing to write inside the input checkpoint"):
        prune_request(form | {"output": str(linked_inputs / "via" / "base" / "pruned")}, base, 8, None)


def test_demo_force_never_deletes_its_own_input(tmp_path):
    from surgeon.demo import DEMO_CANDIDATE, DEMO_MODEL, run_demo

    (tmp_path / "via").symlink_to(DEMO_MODEL.parent)
    before = hashes(DEMO_MODEL), hashes(DEMO_CANDIDATE)
    nested = DEMO_CANDIDATE / "new" / "x"  # its parent must not be created inside the input either
    for folder in (DEMO_MODEL.parent, DEMO_MODEL, DEMO_CANDIDATE / "x", nested, tmp_path / "via" / DEMO_MODEL.name):
        with pytest.raises(SurgeonError, match="refusing to write"):
            run_demo(folder, say=print, show_canary=print, show_verify=print, force=True)
    assert (hashes(DEMO_MODEL), hashes(DEMO_CANDIDATE)) == before
    assert not (DEMO_CANDIDATE / "new").exists()


def test_a_report_may_sit_beside_a_single_file_input_but_not_over_it(tmp_path):
    shutil.copy(TRAINED / "model-00001-of-00002.safetensors", tmp_path / "a.safetensors")
    before = sha(tmp_path / "a.safetensors")
    assert invoke("inspect", tmp_path / "a.safetensors", "--json", "-o", tmp_path / "a.json").exit_code == 0
    over = invoke("inspect", tmp_path / "a.safetensors", "--json", "-o", tmp_path / "a.safetensors", "--force")
    assert over.exit_code == 2 and "refusing to write over the input checkpoint" in over.stderr
    assert sha(tmp_path / "a.safetensors") == before


# ---------------------------------------------------------------------------- exclusive creation


class _Gate:
    """A progress sink whose stop() runs `action` when the shards are written, just before
    the output is renamed into place (both writers have passed every check by then)."""

    def __init__(self, action):
        self.action = action

    def start(self, description, total, unit="bytes"):
        pass

    def advance(self, amount):
        pass

    def stop(self):
        self.action()


def test_two_concurrent_writers_exactly_one_wins(tmp_path, renames):
    base = open_checkpoint(TRAINED)
    out = tmp_path / "out"
    both_written = threading.Barrier(2, timeout=60)
    outcomes: dict[int, object] = {}

    def writer(n: int) -> None:
        replacement = {Q0: bytes([n]) * base.tensors[Q0].nbytes}
        try:
            write_checkpoint(base, out, replacement, progress=_Gate(both_written.wait))
            outcomes[n] = "won"
        except SurgeonError as exc:
            outcomes[n] = str(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, outcomes.values())) == sorted(["won", f"{out}: already exists"])
    winner = next(n for n, outcome in outcomes.items() if outcome == "won")
    data = open_checkpoint(out)
    info = data.tensors[Q0]
    with open(out / info.file, "rb") as handle:
        handle.seek(info.start)
        assert handle.read(info.nbytes) == bytes([winner]) * info.nbytes  # the winner's, whole
    assert leftovers(tmp_path) == []


def test_a_folder_that_appears_before_the_rename_is_kept(tmp_path, renames):
    out = tmp_path / "out"

    def someone_else_writes_it():
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    with pytest.raises(SurgeonError, match="already exists"):
        write_checkpoint(open_checkpoint(TRAINED), out, {}, progress=_Gate(someone_else_writes_it))
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert leftovers(tmp_path) == []


def test_a_report_file_is_created_exclusively(tmp_path, renames):
    out = tmp_path / "report.json"
    atomic.write_output_text(out, "first", force=False)
    with pytest.raises(atomic.OutputExists, match=f"{out}: already exists"):
        atomic.write_output_text(out, "second", force=False)
    assert out.read_text() == "first"
    atomic.write_output_text(out, "third", force=True)
    assert out.read_text() == "third" and leftovers(tmp_path) == []


TWO_PROCESS_BARRIER = """
import os, sys, time
from pathlib import Path
from surgeon.cli import diff as commands
from surgeon.cli.main import main

meeting = Path(sys.argv[1])
real_emit = commands.emit


def emit_when_both_are_here(*args):  # both have passed every check; now both write
    (meeting / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(meeting.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    real_emit(*args)


commands.emit = emit_when_both_are_here  # inspect's own reference to it
main(sys.argv[2:], prog_name="surgeon")
"""


def test_two_processes_writing_one_report_one_wins(tmp_path):
    out, meeting = tmp_path / "out" / "inspect.json", tmp_path / "meeting"
    out.parent.mkdir()
    meeting.mkdir()
    args = ["inspect", str(TRAINED), "--json", "-o", str(out)]
    command = [sys.executable, "-c", TWO_PROCESS_BARRIER, str(meeting), *args]
    runs = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((run.wait(timeout=120), run.stderr.read()) for run in runs)
    assert len(list(meeting.iterdir())) == 2  # they did meet
    assert [code for code, _ in results] == [0, 2]
    assert results[1][1] == f"surgeon: error: {out}: already exists; pass --force\n"
    assert json.loads(out.read_text())["shards"]
    assert leftovers(out.parent) == []


# ---------------------------------------------------------------------------- --force replacement


def test_force_replaces_in_one_step_the_output_is_never_absent(tmp_path, monkeypatch):
    """After every rename the writer makes, the output exists (RENAME_EXCHANGE: one step)."""
    base = open_checkpoint(TRAINED)
    out = tmp_path / "out"
    write_checkpoint(base, out, {})
    (out / "README.md").write_text("old")
    seen = []
    real_renameat2, real_rename = atomic.renameat2, os.rename

    def watched(real):
        def call(*args):
            result = real(*args)
            seen.append(os.path.lexists(out))
            return result

        return call

    monkeypatch.setattr(atomic, "renameat2", watched(real_renameat2))
    monkeypatch.setattr(os, "rename", watched(real_rename))
    write_checkpoint(base, out, {Q0: bytes(base.tensors[Q0].nbytes)}, force=True)
    assert seen and all(seen)
    assert not (out / "README.md").exists() and open_checkpoint(out).tensors[Q0]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- what --force may replace


FOLDER_WRITERS = {
    "salvage": ["salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", "{out}", "--force"],
    "prune": ["prune", TRAINED, "-o", "{out}", "--force", "-q", "--layers", "0"],
    "demo": ["demo", "{out}", "--force"],
}


@pytest.mark.parametrize("command", FOLDER_WRITERS)
def test_force_never_deletes_someone_elses_folder_or_the_current_one(tmp_path, monkeypatch, command):
    """`salvage ... -o project --force` deleted project/src/thesis.tex, and `-o . --force`
    emptied the current folder: each writer of a folder now refuses both, in one line."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "thesis.tex").write_text("years of work")
    cases = [
        (tmp_path, "project", "project: not replacing it: it holds src/, which no checkpoint or surgeon output has"),
        (project, ".", ".: refusing to write over the current folder"),
        (project / "src", "..", "..: refusing to write over a folder that holds the current folder"),
        (project / "src", project, f"{project}: refusing to write over a folder that holds the current folder"),
    ]
    for cwd, out, message in cases:
        monkeypatch.chdir(cwd)
        result = CliRunner().invoke(main, [str(a).format(out=out) for a in FOLDER_WRITERS[command]])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"surgeon: error: {message}") and result.stderr.count("\n") == 1
    assert (project / "src" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"] and leftovers(project) == []


def test_force_replaces_an_empty_folder_a_checkpoint_or_an_earlier_surgeon_output(tmp_path):
    earlier = tmp_path / "earlier"
    assert invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "1", "-o", earlier).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    downloaded = shutil.copytree(TRAINED, tmp_path / "downloaded")
    record = downloaded / ".cache" / "huggingface" / "download"  # what `download --local-dir` leaves
    record.mkdir(parents=True)
    (record / "model.safetensors.metadata").write_text("abc\n")
    (record.parent / ".gitignore").write_text("*\n")
    (downloaded / "README.md").write_text("a checkpoint's own card goes with it")
    demo = tmp_path / "demo"  # the folder `surgeon demo` writes
    for name in ("pruned", "salvaged"):
        shutil.copytree(earlier, demo / name)
    (demo / "MODEL_CARD_SECTIONS.md").write_text("card")
    for folder in (earlier, empty, downloaded, demo):
        result = invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", folder, "--force")
        assert result.exit_code == 0, result.output
        manifest = json.loads((folder / "prune_manifest.json").read_text())
        assert manifest["salvage"]["kept_layers"] == [0] and not (folder / "README.md").exists()
    assert leftovers(tmp_path) == []


def _refused_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Folders --force must not replace, each with the reason it gives."""
    made = {}
    checkpoint_and_work = shutil.copytree(TRAINED, tmp_path / "checkpoint-and-work")
    (checkpoint_and_work / "src").mkdir()
    made["subfolder"] = checkpoint_and_work, "it holds src/, which no checkpoint or surgeon output has"
    foreign = tmp_path / "foreign"  # a manifest surgeon did not write, and no weights
    foreign.mkdir()
    (foreign / "prune_manifest.json").write_text(json.dumps({"schema": "elsewhere/1", "tool": "x"}))
    made["foreign manifest"] = foreign, "its prune_manifest.json is not one surgeon writes (its schema is not surgeon"
    fake = tmp_path / "fake"  # named like a checkpoint, not one: the opener decides
    fake.mkdir()
    (fake / "model.safetensors").write_text("my notes")
    (fake / "config.json").write_text("{}")
    made["fake checkpoint"] = fake, "it is not empty, and it is neither a checkpoint nor an earlier surgeon output"
    (tmp_path / "file").write_text("mine")
    made["file"] = tmp_path / "file", "it is a file, not a folder"
    (tmp_path / "link").symlink_to(tmp_path / "checkpoint-and-work")
    made["link"] = tmp_path / "link", "it is a link, not a folder"
    return made


def test_force_refuses_anything_else_in_one_line_naming_the_folder_and_why(tmp_path):
    """The engine's rule (the TUI's write dialog asks it too), and salvage's line: a file
    given as the folder is refused by the option's own type before that."""
    from surgeon.format.writer import check_output_folder

    base = open_checkpoint(TRAINED)
    for folder, reason in _refused_outputs(tmp_path).values():
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises(SurgeonError) as refused:
            check_output_folder(folder, [base], force=True)
        assert str(refused.value).startswith(f"{folder}: not replacing it: {reason}")
        args = ["salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", folder, "--force"]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert (f"{folder}: not replacing it: {reason}" if folder.name != "file" else "is a file") in result.stderr
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _user_files_beside_outputs(tmp_path: Path) -> dict[str, tuple[Path, str, Path]]:
    """Folders that --force replaced (exit 0) with the user's file in them, before every
    entry had to be one a checkpoint or surgeon writes: (folder, the refusal's words, the
    user's file)."""
    made = {}
    earlier = tmp_path / "earlier"
    assert invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "1", "-o", earlier).exit_code == 0
    notes = shutil.copytree(ROOT / "fixtures" / "gemma4-tiny" / "base", tmp_path / "a2") / "notes.md"
    notes.write_text("work")
    made["checkpoint + notes.md"] = notes.parent, "it holds notes.md, which no", notes
    thesis = shutil.copytree(earlier, tmp_path / "output-and-thesis") / "thesis.tex"
    thesis.write_text("years of work")
    made["surgeon output + thesis.tex"] = thesis.parent, "it holds thesis.tex, which no", thesis
    forged = tmp_path / "a3"
    forged.mkdir()
    (forged / "prune_manifest.json").write_text('{"schema": "surgeon.x"}')
    (forged / "thesis.tex").write_text("t")
    made["forged manifest"] = forged, "it holds thesis.tex, which no", forged / "thesis.tex"
    alone = tmp_path / "forged-alone"
    alone.mkdir()
    (alone / "prune_manifest.json").write_text('{"schema": "surgeon.prune_manifest/1"}')
    made["manifest of the wrong shape"] = (
        alone,
        "its prune_manifest.json is not one surgeon writes",
        alone / "prune_manifest.json",
    )
    demo_shaped = tmp_path / "a4"
    (demo_shaped / "src").mkdir(parents=True)
    (demo_shaped / "src" / "prune_manifest.json").write_text('{"schema": "surgeon.x"}')
    (demo_shaped / "src" / "work.txt").write_text("t")
    made["demo-shaped folder"] = demo_shaped, "it holds src/, which no", demo_shaped / "src" / "work.txt"
    cached = shutil.copytree(earlier, tmp_path / "m1") / ".cache" / "p" / "thesis.tex"
    cached.parent.mkdir(parents=True)
    cached.write_text("t")
    made[".cache with a file"] = cached.parents[2], "its .cache/ holds p, not a download record", cached
    return made


def test_force_never_deletes_a_users_file_beside_checkpoint_files(tmp_path):
    """A hostile re-test: each of these exited 0 and deleted the user's file. Now one line
    naming the first unknown entry, exit 2, and nothing touched."""
    for case, (folder, words, kept) in _user_files_beside_outputs(tmp_path).items():
        before = kept.read_bytes()
        args = ["salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", folder, "--force"]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, (case, result.output)
        assert result.stderr.startswith(f"surgeon: error: {folder}: not replacing it: {words}"), (case, result.stderr)
        assert result.stderr.count("\n") == 1 and kept.read_bytes() == before, case
    assert leftovers(tmp_path) == []


def test_force_never_replaces_a_folder_in_a_hugging_face_cache(tmp_path):
    """`-o <cache>/models--org--name/snapshots/<rev> --force` replaced the snapshot in place:
    that commit then loaded other weights. Refused, and so is anything under models--*."""
    from tests.format.test_checkpoint import make_hub_cache

    snapshot = make_hub_cache(tmp_path / "hub", src=TRAINED)
    weights = {p.name: sha(p) for p in snapshot.iterdir() if p.suffix == ".safetensors"}
    for folder in (snapshot, snapshot.parents[1] / "elsewhere"):
        folder.mkdir(exist_ok=True)
        args = ["salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", folder, "--force"]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert f"{folder}: not replacing it: it is in a Hugging Face cache (models--" in result.stderr
    assert {name: sha(snapshot / name) for name in weights} == weights


def test_force_checks_the_folder_again_before_it_replaces_it(tmp_path):
    """A long run checks at its start; a folder that became someone's meanwhile is kept."""
    base = open_checkpoint(TRAINED)
    out = tmp_path / "out"
    write_checkpoint(base, out, {})
    gate = _Gate(lambda: (out / "src").mkdir())  # while the shards are written
    with pytest.raises(SurgeonError, match="not replacing it: it holds src/, which no checkpoint"):
        write_checkpoint(base, out, {Q0: bytes(base.tensors[Q0].nbytes)}, force=True, progress=gate)
    assert (out / "src").is_dir() and leftovers(tmp_path) == []


CRASH_BETWEEN_RENAMES = """
import os, signal, sys
from surgeon import atomic
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.writer import write_checkpoint

atomic.renameat2 = lambda *args: False  # as where the OS has no renameat2
real = os.rename


def rename(src, dst):
    real(src, dst)
    if ".surgeon-old-" in os.fspath(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # after the old output went aside, before the new one came


os.rename = rename
write_checkpoint(open_checkpoint(sys.argv[1]), sys.argv[2], {}, force=True)
"""


def test_without_exchange_a_kill_between_renames_is_recovered_by_the_next_run(tmp_path):
    base = open_checkpoint(TRAINED)
    out = tmp_path / "out"
    write_checkpoint(base, out, {})
    (out / "README.md").write_text("old")
    run = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_RENAMES, str(TRAINED), str(out)], cwd=ROOT)
    assert run.returncode == -signal.SIGKILL
    assert not out.exists() and any(".surgeon-old-" in name for name in leftovers(tmp_path))
    write_checkpoint(base, tmp_path / "next", {})  # the next run into the same folder
    assert (out / "README.md").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_an_old_output_a_dead_run_moved_aside_is_deleted_once_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    aside = tmp_path / owned_name("out", "old", dead_pid())
    aside.mkdir()
    write_checkpoint(open_checkpoint(TRAINED), tmp_path / "next", {})
    assert (tmp_path / "out").is_dir() and not aside.exists()


# ---------------------------------------------------------------------------- signals and dead runs


SLOW_WRITER = """
import sys, time
from surgeon.format import writer
from surgeon.cli.main import main

writer.COPY_CHUNK = 4096
real = writer._kernel_copy_range


def slow(*args):
    open(sys.argv[1], "a").close()  # the write has started
    time.sleep(0.02)
    return real(*args)


writer._kernel_copy_range = slow
main(sys.argv[2:], prog_name="surgeon")
"""


def _start_slow_salvage(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    started = tmp_path / "started"
    args = ["salvage", str(CANDIDATE), "--base", str(TRAINED), "--keep", "0", "-o", str(out)]
    run = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(started), *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not started.exists():
        assert run.poll() is None, run.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return run, started


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    run, _ = _start_slow_salvage(tmp_path, out_parent / "out")
    assert leftovers(out_parent)  # mid-write: the temporary folder is there
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    assert run.stderr.read() == "surgeon: terminated\n"
    assert list(out_parent.iterdir()) == []


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(tmp_path):
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    run, _ = _start_slow_salvage(tmp_path, out_parent / "out")
    run.kill()
    run.wait(timeout=60)
    assert leftovers(out_parent)  # kill -9 cleans nothing
    write_checkpoint(open_checkpoint(TRAINED), out_parent / "next", {})
    assert leftovers(out_parent) == [] and sorted(p.name for p in out_parent.iterdir()) == ["next"]


def test_only_temp_folders_whose_owner_is_gone_are_removed(tmp_path):
    me = os.getpid()
    dead = tmp_path / owned_name("out", "tmp", dead_pid())
    reused = tmp_path / owned_name("out", "tmp", me, start=atomic._start_time(me) + 1)  # my PID, not my start
    live = tmp_path / owned_name("out", "tmp", me)
    foreign = tmp_path / owned_name("out", "tmp", dead_pid(), space="00000000")  # another machine or boot
    for folder in (dead, reused, live, foreign):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    write_checkpoint(open_checkpoint(TRAINED), tmp_path / "next", {})
    assert not dead.exists() and not reused.exists()
    assert live.exists() and foreign.exists()


# ---------------------------------------------------------------------------- files that change while read


TRUNCATING = """
import os, sys
from surgeon.cli import diff as commands
from surgeon.cli import recover as recover_commands
from surgeon.cli.main import main
from surgeon.format import hashing
from surgeon.format import writer

shard = sys.argv[1]


class Truncator:
    done = False

    def start(self, *args, **kwargs):
        pass

    def stop(self):
        pass

    def advance(self, amount):  # after the first chunk: cut the shard to half its size
        if not self.done:
            self.done = True
            os.truncate(shard, os.path.getsize(shard) // 2)


hashing.CHUNK_BYTES = writer.COPY_CHUNK = 4096
commands.progress_for = lambda quiet: Truncator()
recover_commands.progress_for = lambda quiet: Truncator()  # salvage passes its bar to the writer
writer.NoProgress = Truncator
main(sys.argv[2:], prog_name="surgeon")
"""


def _run_truncating(shard: Path, *args) -> subprocess.CompletedProcess:
    """In a child process: a file that shrinks under a mapping would kill it with SIGBUS."""
    command = [sys.executable, "-c", TRUNCATING, str(shard), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_shard_truncated_while_it_is_copied_is_one_line_exit_2_and_no_temp(tmp_path):
    base = shutil.copytree(TRAINED, tmp_path / "inputs" / "base")
    shard = base / open_checkpoint(base).tensors[Q0].file
    (tmp_path / "outputs").mkdir()
    run = _run_truncating(shard, "salvage", CANDIDATE, "--base", base, "--keep", "0", "-o", tmp_path / "outputs" / "o")
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"surgeon: error: {shard}: changed while it was being read")
    assert run.stderr.count("\n") == 1
    assert list((tmp_path / "outputs").iterdir()) == []


@pytest.mark.parametrize("how", [["--json"], ["--json", "--no-hash"]], ids=["hashing", "comparing"])
def test_a_shard_truncated_while_diff_reads_it_is_one_line_exit_2(tmp_path, how):
    other = shutil.copytree(CANDIDATE, tmp_path / "other")
    shard = other / "model-00001-of-00002.safetensors"
    run = _run_truncating(shard, "diff", TRAINED, other, *how)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"surgeon: error: {shard}: changed while it was being read")
    assert run.stderr.count("\n") == 1


# ---------------------------------------------------------------------------- environment errors


@contextlib.contextmanager
def _tmpfs(path: Path, *, size: str = "64k", read_only: bool = False):
    """A real small or read-only filesystem; needs root (mount), skipped elsewhere: the
    simulated cases below cover the same code."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _assert_names_the_output(result, out: Path, reason: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"surgeon: error: {out}: cannot write ({reason})\n"


def test_disk_full_names_the_output(tmp_path):
    with _tmpfs(tmp_path / "small") as small:
        out = small / "salvaged"
        result = invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", out)
        _assert_names_the_output(result, out, os.strerror(errno.ENOSPC))
        assert list(small.iterdir()) == []
        report = small / "big.json"
        (small / "filler").write_bytes(b"\0" * 60_000)
        result = invoke("inspect", TRAINED, "--json", "-v", "-o", report)
        _assert_names_the_output(result, report, os.strerror(errno.ENOSPC))


def test_a_read_only_filesystem_names_the_output(tmp_path):
    with _tmpfs(tmp_path / "ro", read_only=True) as read_only:
        out = read_only / "salvaged"
        result = invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", out)
        _assert_names_the_output(result, out, os.strerror(errno.EROFS))
        result = invoke("inspect", TRAINED, "--json", "-o", read_only / "i.json")
        _assert_names_the_output(result, read_only / "i.json", os.strerror(errno.EROFS))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode bit")
def test_a_folder_without_write_permission_names_the_output(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", locked / "out")
        _assert_names_the_output(result, locked / "out", os.strerror(errno.EACCES))
    finally:
        locked.chmod(0o700)


# Tests run as root, where neither a mode bit nor (without mount) a full disk can be produced:
# these raise the errno at the lowest call the writer makes, which is what the kernel would do.


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_failing_write_names_the_output(tmp_path, monkeypatch, code):
    def fail(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "copy_file_range", fail)  # every shard's bytes go through it first
    out = tmp_path / "out"
    result = invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", out)
    _assert_names_the_output(result, out, os.strerror(code))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "surgeon-cache") == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_a_folder_that_cannot_be_created_names_the_output(tmp_path, monkeypatch, code):
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(real):
        def call(path, *args, **kwargs):
            if ".surgeon-tmp-" in os.fspath(path):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    monkeypatch.setattr(os, "open", refuse(real_open))
    out = tmp_path / "out"
    result = invoke("salvage", CANDIDATE, "--base", TRAINED, "--keep", "0", "-o", out)
    _assert_names_the_output(result, out, os.strerror(code))
    report = tmp_path / "diff.json"
    result = invoke("inspect", TRAINED, "--json", "-o", report)
    _assert_names_the_output(result, report, os.strerror(code))


def test_a_report_never_replaces_an_inputs_linked_side_file(tmp_path):
    """A Hub snapshot's config.json and index are links into the cache's blobs: `-o` on the
    blob with --force must be refused like `-o` on the folder's own file."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    for path in TRAINED.iterdir():
        if path.suffix == ".safetensors":
            shutil.copy(path, snapshot / path.name)
        else:
            shutil.copy(path, blobs / path.name)
            (snapshot / path.name).symlink_to(blobs / path.name)
    before = hashes(blobs)
    for command in (["diff", snapshot, CANDIDATE], ["inspect", snapshot]):
        for name in ("config.json", "model.safetensors.index.json"):
            result = CliRunner().invoke(main, [str(a) for a in [*command, "-o", blobs / name, "--force"]])
            assert result.exit_code == 2 and "refusing to write over the input" in result.stderr, result.output
    assert hashes(blobs) == before


def test_an_output_in_the_hub_repo_folder_of_an_input_is_refused(tmp_path, monkeypatch):
    """refs/main resolves a Hub id: replacing it (or anything in models--org--name) loses the input."""
    from huggingface_hub import constants

    from tests.format.test_checkpoint import make_hub_cache

    snapshot = make_hub_cache(tmp_path / "hub", src=TRAINED)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = snapshot.parent.parent
    ref = (repo / "refs" / "main").read_text()
    for args in (
        ["diff", "acme/tiny", CANDIDATE, "-o", repo / "refs" / "main", "--force"],
        ["salvage", CANDIDATE, "--base", "acme/tiny", "--keep", "0", "-o", repo / "refs", "--force"],
    ):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and "refusing to write" in result.stderr, result.output
    assert (repo / "refs" / "main").read_text() == ref
