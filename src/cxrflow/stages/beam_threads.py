"""A Beam DoFn that runs its per-element work on a small thread pool, inside one bundle.

ExampleGen's per-file work (reading, SHA-256, PIL decoding) releases the GIL, so threads use
every core. Running them inside the DoFn, rather than as DirectRunner worker threads, lets the
local run use Beam's cheapest mode (one in-memory worker): DirectRunner `multi_threading` adds
gRPC data channels and per-worker bundle set-up, about 0.2-0.3 s of CPU per run whatever the data
(bench/README.md). A remote runner gets the same parallelism inside each of its workers.

Results come out in input order, with at most `2 * threads` elements in flight, so memory stays
bounded by the pool, never by the data.

Imports Beam at the top: import this module lazily, from inside a pipeline function.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from cxrflow.beam_options import local_workers


def in_global_window(value) -> WindowedValue:
    """An output of `finish_bundle`, which has no element whose window it could inherit."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])


class ThreadedDoFn(beam.DoFn):
    """Runs `fn(element, *side_inputs)` on a thread pool; hands each result, in input order, to
    `consume`, whose outputs are this DoFn's outputs. Subclasses override `consume`.

    `threads` None: one per core of the machine the DoFn runs on (`local_workers`), decided in
    `setup`, so a remote worker sizes its own pool.
    """

    def __init__(self, fn: Callable, threads: int | None = None) -> None:
        self._fn = fn
        self._threads_wanted = threads
        self._threads = 1
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def setup(self) -> None:
        self._threads = max(1, self._threads_wanted or local_workers())
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="cxrflow-dofn")

    def start_bundle(self) -> None:
        self._pending = deque()

    def process(self, element, *side_inputs) -> Iterator:
        self._pending.append(self._pool.submit(self._fn, element, *side_inputs))
        while len(self._pending) > 2 * self._threads:
            yield from self.consume(self._pending.popleft().result())

    def finish_bundle(self) -> Iterator:
        while self._pending:
            for out in self.consume(self._pending.popleft().result()):
                yield in_global_window(out)
        yield from map(in_global_window, self.bundle_done())

    def consume(self, result) -> Iterator:
        """The outputs for one finished element (default: its result)."""
        yield result

    def bundle_done(self) -> Iterator:
        """Outputs once a bundle's elements are all consumed (default: none)."""
        return iter(())

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
