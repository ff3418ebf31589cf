"""Host work beside device work for a stream of frames (issue 18's throughput mode of ``nifi restore``): the next
batch is decoded by a background thread while the current one is restored, and finished frames are written by
another while the next one is restored. Order, outputs and errors are those of the plain loop."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``items`` in order, produced by a background thread up to ``depth`` ahead of the consumer
    (``depth`` 0: no thread, the plain iterator). An exception raised while producing item ``k`` is raised here
    after items ``0 .. k-1`` were yielded; a consumer that stops early stops the producer after at most ``depth``
    more items."""
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            q.put((_DONE, e))

    worker = threading.Thread(target=produce, name="nifi-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, err = q.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():          # unblock a producer waiting on a full queue, then let it end
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


class BackgroundWriter:
    """Runs write jobs on one background thread, in submission order; ``wait()`` returns once every job so far has
    finished and raises the first job's error. Use it as a context manager: leaving it waits for every job."""

    def __init__(self, enabled: bool = True):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nifi-writer") if enabled else None
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., object], *args) -> None:
        if self._pool is None:
            fn(*args)
        else:
            self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        for e in errors:
            if e is not None:
                raise e

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
