"""The throughput mode of `nifi restore` (issue 18): batches decoded ahead by a thread, frames written by another;
order, outputs and errors are those of the plain loop."""
import threading
import time

import numpy as np
import pytest
from PIL import Image

from helpers import folder_of_frames as _folder, png_arrays as _arrays, restore_folder as _restore
from nifi_lib.io.prefetch import BackgroundWriter, prefetched

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prefetched_keeps_order_and_runs_ahead_in_another_thread():
    produced, threads = [], set()

    def gen():
        for i in range(6):
            produced.append(i)
            threads.add(threading.current_thread().name)
            yield i

    it = prefetched(gen(), depth=2)
    assert next(it) == 0
    deadline = time.time() + 5
    while len(produced) < 3 and time.time() < deadline:   # the producer fills the queue without the consumer
        time.sleep(0.01)
    assert len(produced) >= 3 and threads == {"nifi-prefetch"}
    assert list(it) == [1, 2, 3, 4, 5]
    assert list(prefetched(iter(range(4)), depth=0)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="depth"):
        list(prefetched([], depth=-1))


def test_prefetched_raises_the_producers_error_after_the_items_before_it():
    def gen():
        yield "a"
        yield "b"
        raise OSError("frame 2 unreadable")

    got = []
    with pytest.raises(OSError, match="frame 2 unreadable"):
        for x in prefetched(gen(), depth=3):
            got.append(x)
    assert got == ["a", "b"]


def test_prefetched_stops_its_producer_when_the_consumer_stops():
    produced = []

    def gen():
        for i in range(1000):
            produced.append(i)
            yield i

    it = prefetched(gen(), depth=2)
    assert next(it) == 0
    it.close()                                     # the consumer leaves early
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n and n <= 5            # the producer ended, at most depth + a few ahead


def test_background_writer_runs_in_order_and_raises_the_first_error():
    done = []
    with BackgroundWriter() as w:
        for i in range(5):
            w.submit(done.append, i)
        w.wait()
        assert done == [0, 1, 2, 3, 4]

        def boom():
            raise OSError("disk full")

        w.submit(boom)
        with pytest.raises(OSError, match="disk full"):
            w.wait()
    inline = []
    with BackgroundWriter(enabled=False) as w:
        w.submit(inline.append, threading.current_thread().name)
    assert inline == [threading.current_thread().name]


def test_restore_with_prefetch_writes_the_same_frames_as_without(model_dir, tmp_path, capsys):
    lq = _folder(tmp_path / "lq", [(24, 16)] * 4 + [(16, 24)] * 3)
    assert _restore(model_dir, lq, tmp_path / "plain", "--batch_size", "2", "--prefetch", "0") == 0
    plain_out = capsys.readouterr().out.split()
    assert _restore(model_dir, lq, tmp_path / "fast", "--batch_size", "2", "--prefetch", "2", "--writers", "3",
                    "--png_level", "1") == 0
    fast_out = capsys.readouterr().out.split()
    a, b = _arrays(tmp_path / "plain"), _arrays(tmp_path / "fast")
    assert sorted(a) == sorted(b) == [f"f{i:02d}.png" for i in range(7)]
    assert all(np.array_equal(a[n], b[n]) for n in a)        # the same computation, bit for bit
    assert [p.split("/")[-1] for p in fast_out] == [p.split("/")[-1] for p in plain_out]   # written in order
    assert _restore(model_dir, lq, tmp_path / "bad", "--prefetch", "-1") != 0
    assert "--prefetch -1" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    for flag, value in (("--writers", "0"), ("--png_level", "12")):
        assert _restore(model_dir, lq, tmp_path / "bad", flag, value) != 0
        assert f"{flag} {value}" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_restore_with_prefetch_keeps_frames_written_before_a_failure(model_dir, tmp_path, monkeypatch,
                                                                     capsys):
    from nifi_lib.restoration import cli as rcli

    lq = _folder(tmp_path / "lq", [(24, 16)] * 5)
    real = rcli._read_input
    calls = []

    def flaky(src, *a):
        calls.append(src.name)
        if src.name == "f03.png":
            raise OSError(f"{src}: truncated file")
        return real(src, *a)

    monkeypatch.setattr(rcli, "_read_input", flaky)
    assert _restore(model_dir, lq, tmp_path / "out", "--batch_size", "1", "--prefetch", "2") != 0
    assert "f03.png: truncated file" in capsys.readouterr().err   # the reader thread's error, named, in the CLI
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f00.png", "f01.png", "f02.png"]
    Image.open(tmp_path / "out" / "f02.png").load()          # whole files only
