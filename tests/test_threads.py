"""The thread policy: one thread for tiny models, physical cores for large ones, explicit requests win."""
import pytest
import torch

from amnesiac.core import threads


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    n = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("AMNESIAC_THREADS", raising=False)
    yield
    threads.set_requested(None)
    torch.set_num_threads(n)


def test_workload_rule():
    assert threads.choose(1_000_000)[0] == 1
    assert threads.choose(7_000_000_000)[0] == threads.physical_cores() >= 1
    rec = threads.configure(2_000_000)
    assert rec["threads"] == 1 == torch.get_num_threads() and "small model" in rec["why"]


def test_precedence(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose(1000) == (2, "OMP_NUM_THREADS")
    monkeypatch.setenv("AMNESIAC_THREADS", "3")
    assert threads.choose(1000) == (3, "AMNESIAC_THREADS")
    threads.set_requested(1)
    assert threads.choose(10**10) == (1, "requested (--threads)")
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_values_are_clear(monkeypatch, bad):
    monkeypatch.setenv("AMNESIAC_THREADS", bad)
    with pytest.raises(ValueError, match="AMNESIAC_THREADS"):
        threads.choose(10)


def test_choice_recorded_in_provenance():
    from amnesiac.io import versions

    threads.configure(10)
    assert versions()["torch_threads"]["threads"] == 1
