"""How many CPU threads torch uses: one for small models, unless the user chose.

torch's default is one intra-op thread per core. For a small model each op is too small to
split: threads spin and wait more than they work, and on a shared machine a waiting thread
loses its core for a whole time slice. Measured on 2 shared cores:
  - issue 11: `surgeon demo` (hidden 32) took 191-258 s with the default against 15.7 s on
    one thread, and the test suite 3x longer;
  - this module's session, beside other jobs: the demo 53.0 s on two threads against 29.7 s
    on one; `surgeon eval` of SmolLM2-135M (hidden 576) on 2048 tokens 50-64 s on two
    against 43-57 s on one (no gain on an idle-looking machine either).
So below SMALL_HIDDEN the CPU path runs on one thread. Wider models keep torch's default:
their matrix products are big enough to split (at 2048, 4M multiply-adds per token and
matrix; the widest we measured is 576, so the cut-off itself is a judgement, not a finding).
An explicit choice always wins: SURGEON_THREADS, or OMP_NUM_THREADS / MKL_NUM_THREADS,
which torch reads itself. On a GPU the CPU threads only feed it and are left alone.
"""

from __future__ import annotations

import os

import torch

from surgeon.errors import SurgeonError

SMALL_HIDDEN = 2048
EXPLICIT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch sizes its pool from these itself
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before surgeon changed it


def use_cpu_threads(device: torch.device, hidden_size: int | None) -> None:
    """Set torch's intra-op threads for running a model of this width on this device."""
    chosen = os.environ.get("SURGEON_THREADS")
    if chosen is not None:
        torch.set_num_threads(_count(chosen))
    elif device.type == "cpu" and not any(os.environ.get(name) for name in EXPLICIT):
        small = hidden_size is not None and hidden_size < SMALL_HIDDEN
        torch.set_num_threads(1 if small else DEFAULT_THREADS)  # a wide model after a small one: back


def _count(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 0 < int(value) <= 1024):
        raise SurgeonError(f"SURGEON_THREADS={value!r}: give a number of threads from 1 to 1024")
    return int(value)
