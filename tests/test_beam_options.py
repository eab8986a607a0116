"""Local parallelism defaults for the Beam data stages."""

from __future__ import annotations

import pytest

from cxrflow import beam_options
from cxrflow.beam_options import with_local_threads


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(beam_options.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    return set_cores


def test_local_run_gets_one_thread_per_core_up_to_the_cap(cores):
    cores(2)
    assert with_local_threads([]) == ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
    cores(64)
    assert with_local_threads(["--runner=DirectRunner"])[-1] == f"--direct_num_workers={beam_options.MAX_LOCAL_THREADS}"


@pytest.mark.parametrize(
    "args",
    [
        ["--runner=DataflowRunner", "--project=p"],
        ["--runner", "FlinkRunner"],
        ["--direct_running_mode=multi_processing"],
        ["--direct_num_workers", "1"],
    ],
)
def test_other_runners_and_explicit_choices_are_left_alone(cores, args):
    cores(8)
    assert with_local_threads(args) == args


def test_one_core_adds_nothing(cores):
    cores(1)
    assert with_local_threads(("--temp_location=/tmp/x",)) == ["--temp_location=/tmp/x"]


def test_local_workers_one_per_core_capped(cores):
    cores(1)
    assert beam_options.local_workers() == 1
    cores(3)
    assert beam_options.local_workers() == 3
    cores(64)
    assert beam_options.local_workers() == beam_options.MAX_LOCAL_THREADS
