"""The names of the importance scorers and heal methods are owned by the torch-free options
(surgeon.prune.options), which the CLI offers as choices; the torch implementations register
under exactly those names."""

from typing import get_args

from surgeon.prune.heal import HEALERS
from surgeon.prune.importance import SCORERS
from surgeon.prune.options import HEALS, IMPORTANCE, Heal, Importance


def test_every_named_method_has_an_implementation_and_no_other():
    assert tuple(SCORERS) == IMPORTANCE == get_args(Importance) == ("recon", "norm", "loo-nll")
    assert tuple(HEALERS) == HEALS == get_args(Heal) == ("lstsq", "anchored", "none")
