"""A quality-budget search that does not grade itself (issue 19, point 2).

`salvage --auto --max-kl/--max-ppl-ratio` tries many plans and keeps the largest one whose
figure is within the budget; a figure chosen that way is biased low on the text it was
chosen on (on SmolLM2, a KL 0.044 searched on 1024 tokens was 0.333 on other text). So the
eval text is split in two disjoint parts: the search sees only one, and the plan it keeps is
measured once on the other. That confirmation is the figure the manifest and the model card
show; the search's is recorded beside it.

The documents are split first (alternate documents to each part) and each part is cut into
windows of its own, packed as `surgeon eval` packs a text, so no window holds text of both
parts; a split session is made from those windows (`EvalSession.part`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.quality.evaluate import EvalSession, load_eval_text, make_windows
from surgeon.recover.salvage import PlanSearch, QualityBudget, budget_search
from surgeon.runtime.tokenizer import load_tokenizer

HOW = (
    "salvage --auto with a quality budget: searched on one part of the eval text, the kept plan "
    "confirmed on the other (composed in memory)"
)


@dataclass
class SplitSession:
    """One eval text in two disjoint parts, each an EvalSession over its own windows."""

    search: EvalSession
    confirm: EvalSession
    text: dict  # the text record of both parts' windows together
    by: str  # "documents" or "windows" (split_session)

    def record(self) -> dict:
        return {"by": self.by, "search_windows": len(self.search.windows), "confirm_windows": len(self.confirm.windows)}


def split_session(session: EvalSession) -> SplitSession:
    """SESSION's text in two parts, for a search and its confirmation. With 2 documents or
    more, alternate documents go to each part, so both span the text's kinds of writing (the
    bundled held-out text: licences, a language reference, release notes, a manual), and each
    part is cut into windows as `surgeon eval` cuts a text (packed, or --per-document), up to
    the token budget each; one document's windows alternate between the parts."""
    options = session.options
    tokenizer = load_tokenizer(options.run.tokenizer_dir(session.base.root))
    documents, read = load_eval_text(Path(options.text) if options.text else None, options.text_format)
    if read.get("file_sha256") != session.text.get("file_sha256"):  # the record names one text
        raise SurgeonError(f"{session.text['source']}: the evaluation text changed while it was read")
    window = session.text.get("window", options.window)  # the model's positions cap it

    def cut(part: list[str], budget: int) -> list[list[int]]:
        return make_windows(tokenizer, part, window, budget, options.per_document)

    if len(documents) >= 2:
        # --eval-tokens for each part: the search, the costly part, reads as much as it did
        # before there was a split, and the confirmation as much again (one evaluation more).
        # Half each left 4,088 tokens of the bundled text on each side, under FEW_TOKENS.
        budget = options.max_tokens
        parts, by = [cut(documents[0::2], budget), cut(documents[1::2], budget)], "documents"
    else:
        windows = cut(documents, options.max_tokens)
        parts, by = [windows[0::2], windows[1::2]], "windows"
    if not parts[0] or not parts[1]:
        raise SurgeonError(
            f"{session.text['source']}: too little text to search on one part and confirm on another "
            f"({len(parts[0]) + len(parts[1])} window); give more --eval-tokens or a longer --eval-text"
        )
    both = parts[0] + parts[1]
    text = {**session.text, "windows": len(both), "tokens": sum(map(len, both))}
    return SplitSession(session.part(parts[0]), session.part(parts[1], cache=False), text, by)


def scored_tokens(session: EvalSession) -> int:
    """The tokens SESSION scores: each window's but its first (nothing predicts it)."""
    return sum(len(w) - 1 for w in session.windows)


@dataclass
class ConfirmedSearch:
    """A budget search on one part of the text and its kept plan measured on the other."""

    found: PlanSearch  # its `quality`: the kept plan's summary on the search part
    confirmed: dict | None  # the kept plan's summary on the confirmation part; None when nothing is kept
    within: bool  # whether `confirmed` is within the budget (nothing kept: the base is)
    record: dict | None  # the manifest's `quality` record; None when nothing is kept


def confirmed_budget_search(
    split: SplitSession, budget: QualityBudget, *, canary_passes=None, on_step=None
) -> ConfirmedSearch:
    """surgeon.recover.salvage.budget_search on SPLIT's search part, then the plan it keeps
    scored once on the confirmation part."""
    found = budget_search(
        sorted(split.search.changed_layers),
        lambda plans: [report.summary() for report in split.search.evaluate_plans(plans)],
        budget,
        canary_passes=canary_passes,
        on_step=on_step,
    )
    if not found.keep or found.quality is None:
        return ConfirmedSearch(found, None, True, None)
    confirmed = split.confirm.evaluate_plans([found.keep])[0].summary()
    within = budget.within(confirmed)
    record = {
        "how": HOW,
        "budget": {"max_kl": budget.max_kl, "max_ppl_ratio": budget.max_ppl_ratio},
        "text": split.text,
        "split": split.record(),
        "search": found.quality,
        "eval": confirmed,  # the figure the card shows (surgeon.quality.record reads `eval`)
        "within_budget": within,
        "layer_kl": {str(k): v for k, v in (found.layer_kl or {}).items()},
    }
    return ConfirmedSearch(found, confirmed, within, record)
