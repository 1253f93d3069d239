"""The torch thread policy (surgeon/runtime/threads.py): one thread for small models on the
CPU, torch's default for wide ones, and an explicit choice always wins."""

import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.runtime import threads

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    for name in ("SURGEON_THREADS", *threads.EXPLICIT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 3)  # a default that differs from 1 on any machine
    yield
    torch.set_num_threads(before)


def test_a_small_model_on_the_cpu_runs_on_one_thread_and_a_wide_one_gets_the_default_back():
    threads.use_cpu_threads(CPU, 576)
    assert torch.get_num_threads() == 1
    threads.use_cpu_threads(CPU, 4096)
    assert torch.get_num_threads() == 3


def test_an_explicit_choice_wins(monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads.use_cpu_threads(CPU, 32)
    assert torch.get_num_threads() == 2  # torch's own variable: left as the user set it
    monkeypatch.setenv("SURGEON_THREADS", "4")
    threads.use_cpu_threads(CPU, 32)
    assert torch.get_num_threads() == 4


def test_a_gpu_run_leaves_the_cpu_threads_alone():
    torch.set_num_threads(2)
    threads.use_cpu_threads(CUDA, 32)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["0", "two", "-1", "99999", "\u0663"])
def test_a_bad_thread_count_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("SURGEON_THREADS", value)
    with pytest.raises(SurgeonError, match="SURGEON_THREADS"):
        threads.use_cpu_threads(CPU, 32)
