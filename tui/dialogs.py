"""Modal screens: errors, confirmations, help, the write dialog and a tensor's detail. Each
is a `Dialog`: a box in the middle of the screen, styled by the Dialog's own CSS."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen, ScreenResultType
from textual.widgets import Button, Checkbox, Footer, Input, Label, Markdown, Static

from surgeon.atomic import OutputExists
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.replacing import what_is_there
from surgeon.format.writer import check_output_folder
from surgeon.text import inert, inert_lines

from .tabs import TABS


def plain(message: str | Text) -> Text:
    """A message for a Label or Static: its strings may quote names from files (an error, a
    folder), so a str is shown as it is, never parsed as markup, and keeps only its line breaks."""
    return message if isinstance(message, Text) else Text(inert_lines(message))


class Dialog(ModalScreen[ScreenResultType]):
    """A modal box (`#dialog`) over the dimmed app: a title, a body, buttons on the right.

    `#dialog` scrolls and its buttons are docked at its bottom: on a short screen (80x24) the
    body scrolls and the buttons stay in sight (they were drawn below the screen's edge)."""

    DEFAULT_CSS = """
    Dialog { align: center middle; }
    #dialog {
        width: 90%; max-width: 100; height: auto; max-height: 90%; border: thick $primary; background: $surface;
        padding: 0 1;
    }
    #dialog.error { border: thick $error; }
    #dialog-title { text-style: bold; padding-bottom: 1; }
    #dialog-buttons { height: 3; align: right middle; dock: bottom; }
    #dialog-buttons Button { margin-left: 1; }
    """


class MessageDialog(Dialog[None]):
    """An error, or a result to read (verify): dismissed with Enter or Escape."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, title: str, body: str | Text, error: bool = False):
        super().__init__()
        self.title_text, self.body, self.error = title, body, error

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", classes="error" if self.error else ""):
            yield Label(plain(self.title_text), id="dialog-title")
            yield Static(plain(self.body), id="dialog-text")
            with Horizontal(id="dialog-buttons"):
                yield Button("OK", id="ok", variant="primary")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)


class ConfirmDialog(Dialog[bool]):
    BINDINGS = [Binding("escape", "no", "No"), Binding("y", "yes", "Yes")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No"):
        super().__init__()
        self.question, self.yes_label, self.no_label = question, yes, no

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", can_focus=False):
            yield Static(plain(self.question), id="dialog-text")
            with Horizontal(id="dialog-buttons"):
                yield Button(self.yes_label, id="yes", variant="error")
                yield Button(self.no_label, id="no", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class WriteDialog(Dialog["tuple[Path, bool, bool] | None"]):
    """Where to write the current plan, with what it will write; returns (path, replace,
    reshape). `reshape`: where the plan can be reshaped, the line saying what it saves; the
    dialog then offers a Reshape box (off), which slices the removed heads out."""

    DEFAULT_CSS = """
    #write-description-box { height: auto; max-height: 7; margin-bottom: 1; }
    #write-replace { width: 1fr; }
    WriteDialog #dialog-buttons Button { min-width: 10; }  /* with Reshape: every label whole at 80 */
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default_output: Path, description, inputs: list[Path], reshape: Text | None = None):
        super().__init__()
        self.default_output, self.description, self.inputs = default_output, description, inputs
        self.reshape = reshape

    def compose(self) -> ComposeResult:
        # The plan's description scrolls in its own box, so that at 80x24 the folder box, the
        # checkbox and the buttons (one row) are in sight without scrolling the dialog.
        with VerticalScroll(id="dialog", can_focus=False):
            yield Label("Write the rollback plan", id="dialog-title")
            with VerticalScroll(id="write-description-box", can_focus=False):
                yield Static(self.description, id="write-description")
            yield Label("Output folder")
            yield Input(str(self.default_output), id="write-output")
            with Horizontal(id="dialog-buttons"):
                yield Checkbox("Replace if it exists", id="write-replace")
                if self.reshape is not None:
                    yield Checkbox("Reshape", id="write-reshape", tooltip=self.reshape)
                yield Button("Write", id="write", variant="success")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "write":
            self._submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def _submit(self) -> None:
        """Problems with the folder are shown here, with the dialog still open to fix them;
        replacing an existing folder is confirmed first, since everything in it goes."""
        text = self.query_one("#write-output", Input).value.strip()
        replace = self.query_one("#write-replace", Checkbox).value
        boxes = self.query("#write-reshape").results(Checkbox)
        reshape = any(box.value for box in boxes)
        if not text:
            self.notify("Give an output folder", severity="error")
            return
        output = Path(text).expanduser()
        try:
            exists = self._exists(output)
        except SurgeonError as exc:
            self.notify(inert(exc), severity="error", timeout=8, markup=False)
            return
        if not exists:
            self.dismiss((output, False, reshape))
        elif not replace:
            message = f"{inert(output)} already exists: tick Replace to replace it, or choose another"
            self.notify(message, severity="error", markup=False)
        else:
            question = f"{output} exists: {_folder_note(output)}. Replace it? Everything in it will be deleted."

            def answered(yes: bool | None) -> None:
                if yes:
                    self.dismiss((output, True, reshape))

            # A question of the dialog's own, stacked over it: the app's session is not involved.
            self.app.push_screen(ConfirmDialog(question, "Replace"), answered)

    def _exists(self, output: Path) -> bool:
        """Whether something is at `output`, by the writer's own guard (the one salvage runs
        first, as the CLI does), so the dialog and the write cannot disagree: a dangling link
        is there (lexists), where Path.exists() said it was not and the write then failed.
        Raises SurgeonError for an output the write would refuse, replaced or not: with force,
        the engine's rule of what --force may replace (surgeon.format.replacing)."""
        inputs = [open_checkpoint(str(p)) for p in self.inputs]
        try:
            check_output_folder(output, inputs, force=False)
        except OutputExists:
            check_output_folder(output, inputs, force=True)  # what replacing it would meet
            return True
        return False

    def action_cancel(self) -> None:
        self.dismiss(None)


class BudgetDialog(Dialog["tuple[float | None, float | None] | None"]):
    """The quality budget of an auto plan: a mean KL and, optionally, a perplexity ratio.
    Returns (max_kl, max_ppl_ratio), an empty box being None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, max_kl: str = "0.05"):
        super().__init__()
        self.max_kl = max_kl

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", can_focus=False):
            yield Label("Auto plan by quality budget", id="dialog-title")
            yield Static(
                "Keep the largest set of changed layers whose composed model stays within the budget "
                "on the eval text, then confirm it with the canary. Layers are added cheapest first.",
                id="budget-description",
            )
            yield Label("Max mean KL per token (nats)")
            yield Input(self.max_kl, id="budget-kl")
            yield Label("Max perplexity ratio (empty: no limit)")
            yield Input("", placeholder="e.g. 1.02", id="budget-ppl")
            with Horizontal(id="dialog-buttons"):
                yield Button("Search", id="search", variant="success")
                yield Button("Cancel", id="cancel")
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "search":
            self._submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def _submit(self) -> None:
        limits = []
        for box, what, low in (("#budget-kl", "the KL", 0.0), ("#budget-ppl", "the perplexity ratio", 1.0)):
            text = self.query_one(box, Input).value.strip()
            try:
                value = float(text) if text else None
            except ValueError:
                value = -1.0
            if value is not None and not low <= value < float("inf"):
                self.notify(f"{what}: give a number >= {low:g}, or leave it empty", severity="error", markup=False)
                return
            limits.append(value)
        if limits == [None, None]:
            self.notify("Give a KL or a perplexity ratio", severity="error")
            return
        self.dismiss((limits[0], limits[1]))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _folder_note(folder: Path) -> str:
    """What the folder is, in the engine's words: only what --force may replace gets here."""
    _, kind = what_is_there(folder)
    return f"{kind}, {sum(1 for _ in folder.iterdir())} entries"


def tab_keys() -> str:
    """The help table's row for the tab keys: "| `1`-`5` | Overview, Tensors, Plan, Canary, Prune |"."""
    return f"| `{TABS[0].key}`-`{TABS[-1].key}` | {', '.join(tab.title for tab in TABS)} |"


HELP = f"""\
# surgeon

Compare a **base** checkpoint with a **candidate** (a pruned one), choose which changed
layers to keep, check the choice with the canary, and write it.

| key | action |
|---|---|
{tab_keys()}
| `space` | on a layer row: keep it from the candidate / roll it back to base |
| `ctrl+z`, `ctrl+y` | undo, redo a plan change |
| `n` | toggle non-layer tensors (embeddings, final norm, lm_head) |
| `/` | search the tab's table for a layer or words (enter: keep, escape: back); the Tensors tab's filter |
| `l` | on the Plan tab: type a layer range such as `4-59` (enter rolls those layers back) |
| `escape` | leave a text box, back to the tab's table |
| `s` | on the Tensors tab: next sort order (or click a column header) |
| `y`, `Y` | on the Tensors tab: copy the tensor's full SHA256, its name |
| `home`/`g`, `end`/`G` | the first, the last row: a layer of the maps, a tensor of the (filtered) list |
| `c` | run the canary on the current plan (in memory, nothing written) |
| `a` | auto plan: the largest set of changed layers that passes the canary |
| `e` | eval the plan against the base (perplexity ratio, KL, top-1), and each changed layer alone |
| `w` | write the plan to a folder, then verify it |
| `p` | on the Prune tab: start a prune (it asks first, naming the output folder) |
| `x` | cancel the running job |
| `r` | hash and compare the pair again (after a cancelled hashing, say) |
| `enter` | on a tensor: its hashes, stats and heads |
| `ctrl+p` | command palette: every action by name |
| `?` | this help |
| `q` | quit (asks first while a write runs) |

Layer map: `·` identical, `●` changed, `H` heads zeroed, `↺` rolled back to base, blank: the
layer has no such tensor (Gemma 4's full layers have no `v_proj`: k = v). "zeroed heads"
lists the query heads that are all zeros in the candidate, by index (`#0` is the first).
"experts" (Overview, a mixture-of-experts pair): each layer's changed experts, "#3, #17 of 128".
In a search (`/`), digits find that layer, words any cell containing them; down/up go to the
next and previous match, and `/` enter alone finds the next match of the last search.
"KL alone" (Plan tab) is each changed layer's cost measured alone: the mean KL(base ‖ base +
that layer) per token of the bundled held-out text, with a bar scaled to the costliest layer.
The command palette's "Auto plan by quality budget" keeps the largest set within a KL budget.
Shard verdicts come from file SHA256s: identical, header-only, changed. Other files (config,
tokenizer, manifest) are listed beside them at 120 columns and wider; the summary line names
any that differ at every width. The canary and prune use the base's tokenizer unless
`surgeon tui --tokenizer DIR` names another.
"""


class HelpScreen(Dialog[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Markdown(HELP, id="help-text")
            yield from close_button()
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)


class TensorDetail(Dialog[None]):
    BINDINGS = [Binding("escape,enter", "dismiss", "Close")]

    def __init__(self, tensor):
        super().__init__()
        self.tensor = tensor

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label(Text(inert(self.tensor.name)), id="dialog-title")
            yield Static(tensor_detail(self.tensor), id="tensor-detail")
            yield from close_button()
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)


def close_button() -> ComposeResult:
    """A dialog's one button: for the mouse, and to show that the box closes (the keys are in the footer)."""
    with Horizontal(id="dialog-buttons"):
        yield Button("Close", id="close", variant="primary")


def tensor_detail(t) -> Table:
    """Everything the diff knows about one tensor."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("status", t.status)
    grid.add_row("layer", "-" if t.layer is None else str(t.layer))
    grid.add_row("family", Text(inert(t.family)))
    for label, side in (("base", t.base), ("candidate", t.other)):
        if side is None:
            grid.add_row(label, "(absent)")
            continue
        grid.add_row(label, Text(inert(f"{side.dtype} {list(side.shape)} in {side.shard}")))
        grid.add_row(f"{label} sha256", Text(inert(side.sha256 or "(not hashed)")))
    if t.stats is not None:
        s = t.stats
        grid.add_row("elements changed", f"{s.elements_changed} ({s.frac_changed:.2%})")
        for label, value in (("max |delta|", s.max_abs_delta), ("relative", s.rel_frobenius), ("cosine", s.cosine)):
            grid.add_row(label, "-" if value is None else f"{value:.6g}")
    if t.heads is not None:
        grid.add_row("heads", head_view(t.heads))
    return grid


def head_view(heads) -> Text:
    """One mark per head along the projection's head axis."""
    marks = {"unchanged": ("·", "dim"), "changed": ("●", "yellow"), "zeroed": ("0", "bold red")}
    text = Text(f"{heads.projection} {heads.axis}, {heads.num_heads} heads of {heads.head_dim}\n")
    for index, status in enumerate(heads.statuses):
        mark, style = marks.get(status, ("?", "magenta"))
        text.append(f"{index}:", style="dim").append(mark, style=style).append(" ")
    zeroed = heads.heads_with("zeroed")
    if zeroed:
        text.append(f"\nzeroed: {', '.join(map(str, zeroed))}", style="red")
    if heads.uniform_attention:
        text.append(f"\nuniform attention (q zeroed, o kept): {heads.uniform_attention}", style="magenta")
    return text
