"""A rollback plan: which changed layers of a candidate stay, the rest going back to the base.

Pure bookkeeping over a DiffReport (no bytes are read, no torch): what the TUI shows live
while layers are toggled, and the `keep` list salvage() is then asked to write. It follows
salvage's rules: a tensor of a kept layer comes from the candidate, every other tensor from
the base unless non-layer tensors are kept too, and the output has the base's shard layout,
so a shard is written only where it will hold candidate bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.diff.engine import DiffReport
from surgeon.errors import SurgeonError
from surgeon.model.names import parse_layers
from surgeon.text import layer_ranges


@dataclass(frozen=True)
class PlanState:
    keep: frozenset[int]
    keep_non_layer: bool


@dataclass(frozen=True)
class PlanSummary:
    keep: list[int]  # changed layers that stay as the candidate has them
    rolled_back: list[int]  # changed layers that go back to the base
    from_candidate: list[str]  # differing tensors taken from the candidate
    from_base: list[str]  # differing tensors put back to the base's bytes
    identical_tensors: int  # tensors equal on both sides: the base's bytes either way
    shards_written: list[str]  # base shard files that will hold candidate bytes
    shards_identical: list[str]  # shard files that will be the base's, byte for byte
    keep_non_layer: bool
    problems: list[str]  # why salvage would refuse this pair (added/removed/retyped tensors)

    @property
    def keep_text(self) -> str:
        return layer_ranges(self.keep) or "none"

    @property
    def rolled_back_text(self) -> str:
        return layer_ranges(self.rolled_back) or "none"


class RollbackPlan:
    """Starts as "the candidate as it is": every changed layer kept, and non-layer tensors
    (embeddings, final norm, lm_head) kept when the candidate changed any."""

    def __init__(self, report: DiffReport):
        self.report = report
        self.differing = [t for t in report.tensors if t.status != "identical"]
        self.changed_layers = sorted({t.layer for t in self.differing if t.layer is not None})
        # The layers a range may name: those the tensors carry (sparse numbers included),
        # never range(largest + 1), which one tensor named `layers.999999999.x` would blow up.
        self.layers = sorted(set(report.layer_numbers()) | set(self.changed_layers))
        self.num_layers = len(self.layers)
        self._changed = frozenset(self.changed_layers)
        non_layer_changed = any(t.layer is None for t in self.differing)
        self.state = PlanState(frozenset(self.changed_layers), non_layer_changed)
        self._undo: list[PlanState] = []
        self._redo: list[PlanState] = []

    @property
    def keep(self) -> list[int]:
        return sorted(self.state.keep)  # _change keeps it within the changed layers

    def source_of(self, layer: int) -> str:
        """ "candidate", "base" (rolled back) or "identical" (nothing to choose)."""
        if layer not in self._changed:
            return "identical"
        return "candidate" if layer in self.state.keep else "base"

    def toggle(self, layer: int) -> None:
        if layer not in self._changed:
            raise SurgeonError(f"layer {layer} is identical in base and candidate: nothing to roll back")
        self._change(self.state.keep ^ {layer}, self.state.keep_non_layer)

    def roll_back(self, spec: str) -> None:
        self._change(self.state.keep - self._parse(spec), self.state.keep_non_layer)

    def restore(self, spec: str) -> None:
        self._change(self.state.keep | self._parse(spec), self.state.keep_non_layer)

    def keep_only(self, spec: str) -> None:
        self._change(self._parse(spec), self.state.keep_non_layer)

    def set_keep(self, layers) -> None:
        """Keep exactly `layers` (an auto search's answer); one undoable change."""
        self._change(frozenset(layers), self.state.keep_non_layer)

    def toggle_non_layer(self) -> None:
        self._change(self.state.keep, not self.state.keep_non_layer)

    def undo(self) -> bool:
        return self._step(self._undo, self._redo)

    def redo(self) -> bool:
        return self._step(self._redo, self._undo)

    def summary(self) -> PlanSummary:
        keep = set(self.keep)
        taken = [t for t in self.differing if self._from_candidate(t, keep)]
        names = {t.name for t in taken}
        written = {t.base.shard for t in taken if t.base is not None}
        shards = [s.name for s in self.report.shards if s.size[0] is not None]
        problems = [f"{t.name}: {t.status} in the candidate" for t in self.differing if t.status != "changed"]
        return PlanSummary(
            keep=sorted(keep),
            rolled_back=[n for n in self.changed_layers if n not in keep],
            from_candidate=[t.name for t in taken],
            from_base=[t.name for t in self.differing if t.name not in names],
            identical_tensors=len(self.report.tensors) - len(self.differing),
            shards_written=sorted(written),
            shards_identical=sorted(set(shards) - written),
            keep_non_layer=self.state.keep_non_layer,
            problems=problems,
        )

    def _from_candidate(self, tensor, keep: set[int]) -> bool:
        if tensor.layer is None:
            return self.state.keep_non_layer
        return tensor.layer in keep

    def _parse(self, spec: str) -> frozenset[int]:
        return frozenset(parse_layers(spec, self.layers, what="layers"))

    def _change(self, keep: frozenset[int], keep_non_layer: bool) -> None:
        new = PlanState(frozenset(keep) & self._changed, keep_non_layer)
        if new != self.state:
            self._undo.append(self.state)
            self._redo.clear()
            self.state = new

    def _step(self, source: list[PlanState], target: list[PlanState]) -> bool:
        if not source:
            return False
        target.append(self.state)
        self.state = source.pop()
        return True
