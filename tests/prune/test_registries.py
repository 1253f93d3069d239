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


def test_every_channel_importance_has_an_implementation_and_no_other():
    from surgeon.prune.ffn import SCORERS as FFN_SCORERS
    from surgeon.prune.options import FFN_IMPORTANCE, FfnImportance

    assert tuple(FFN_SCORERS) == FFN_IMPORTANCE == get_args(FfnImportance) == ("wanda", "flap", "obs")
