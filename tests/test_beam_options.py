"""ExampleGen's Beam options: the local defaults and what is left to the user."""

from __future__ import annotations

import pytest

from cxrflow import beam_options
from cxrflow.beam_options import with_local_defaults


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(beam_options.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    return set_cores


def test_a_run_without_a_runner_gets_the_in_memory_batch_runner():
    assert with_local_defaults([]) == ["--runner=FnApiRunner", "--no_pipeline_type_check"]
    assert with_local_defaults(("--temp_location=/tmp/x",))[0] == "--temp_location=/tmp/x"


@pytest.mark.parametrize(
    "args",
    [
        ["--runner=DataflowRunner", "--project=p"],
        ["--runner", "FlinkRunner"],
        ["--runner=DirectRunner", "--direct_running_mode=multi_processing"],
    ],
)
def test_a_named_runner_and_its_options_are_left_alone(args):
    assert with_local_defaults(args) == [*args, "--no_pipeline_type_check"]


def test_direct_options_without_a_runner_reach_the_local_runner():
    args = ["--direct_running_mode=multi_threading", "--direct_num_workers=2", "--no_pipeline_type_check"]
    assert with_local_defaults(args) == [*args, "--runner=FnApiRunner"]


def test_local_workers_one_per_core_capped(cores):
    cores(1)
    assert beam_options.local_workers() == 1
    cores(3)
    assert beam_options.local_workers() == 3
    cores(64)
    assert beam_options.local_workers() == beam_options.MAX_LOCAL_THREADS


@pytest.mark.parametrize(
    ("args", "one"),
    [
        ([], True),
        (["--runner=DirectRunner"], True),
        (["--direct_running_mode=multi_threading", "--direct_num_workers=2"], False),
        (["--direct_num_workers=0"], False),  # one per core
        (["--runner=DataflowRunner", "--project=p"], False),
    ],
)
def test_one_local_worker_only_for_the_single_in_memory_worker(args, one):
    from apache_beam.options.pipeline_options import PipelineOptions

    assert beam_options.one_local_worker(PipelineOptions(with_local_defaults(args))) is one
