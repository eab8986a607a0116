"""ThreadedDoFn: results in input order, bounded work in flight, errors reach the runner."""

from __future__ import annotations

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from cxrflow.stages.beam_threads import ThreadedDoFn


def _run(dofn: beam.DoFn, elements: list) -> list:
    """Calls the DoFn as a runner does for one bundle; returns its outputs, values unwrapped."""
    dofn.setup()
    dofn.start_bundle()
    out = [v for e in elements for v in dofn.process(e)]
    out += [wv.value for wv in dofn.finish_bundle()]
    dofn.teardown()
    return out


def test_results_come_in_input_order_whatever_order_the_threads_finish_in():
    def slow_for_small(x: int) -> int:
        time.sleep(0.002 * (20 - x))
        return x * 10

    assert _run(ThreadedDoFn(slow_for_small, threads=4), list(range(20))) == [x * 10 for x in range(20)]


def test_at_most_two_per_thread_are_in_flight():
    running, peak, lock = [0], [0], threading.Lock()

    def track(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.001)
        with lock:
            running[0] -= 1
        return x

    dofn = ThreadedDoFn(track, threads=2)
    dofn.setup()
    dofn.start_bundle()
    for e in range(30):
        list(dofn.process(e))
        assert len(dofn._pending) <= 4  # submitted but not yet handed on
    list(dofn.finish_bundle())
    dofn.teardown()
    assert peak[0] <= 2


def test_an_error_in_a_thread_fails_the_bundle():
    def boom(x: int) -> int:
        if x == 3:
            raise ValueError("bad element 3")
        return x

    with pytest.raises(ValueError, match="bad element 3"):
        _run(ThreadedDoFn(boom, threads=2), list(range(10)))


def test_in_a_pipeline_side_inputs_reach_the_function():
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"])) as p:
        offset = p | "offset" >> beam.Create([100])
        out = (
            p
            | beam.Create(list(range(50)))
            | beam.ParDo(ThreadedDoFn(lambda x, o: x + o, threads=3), beam.pvalue.AsSingleton(offset))
        )
        assert_that(out, equal_to([x + 100 for x in range(50)]))
