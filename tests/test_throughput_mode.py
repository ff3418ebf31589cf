"""Issue 18 throughput mode: the restore loop of a folder has one home (``restoration.cli.restore_stream``), which
`nifi restore` and the GPU bench's ``stream`` part (frames/s of the loop, prefetch 0 vs 2) both run."""
import json
import tempfile
import threading

import numpy as np
import pytest

from helpers import folder_of_frames as _folder, lib_call_sites, png_arrays as _arrays, tiny_backbone
from nifi_lib.bench import gpu
from nifi_lib.diffusion.latents import to_model_range, to_unit_range
from nifi_lib.io.images import load_image, probe_rgb, to_uint8
from nifi_lib.restoration import cli as rcli
from nifi_lib.restoration.restorer import Restorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_restore_loop_has_one_home():
    assert lib_call_sites("prefetched") == {"restoration/cli.py": 1}
    assert lib_call_sites("BackgroundWriter") == {"restoration/cli.py": 1}
    assert lib_call_sites("restore_stream") == {"restoration/cli.py": 1, "bench/gpu.py": 1}


def test_restore_stream_writes_every_frame_in_order_the_same_at_any_prefetch(tmp_path):
    lq = _folder(tmp_path / "lq", [(24, 16)] * 3 + [(16, 24)] * 2)   # two sizes: batches of 2, 1, 2
    restorer = Restorer(tiny_backbone(seed=0), adapter=None)
    items = [(src, None, probe_rgb(src)) for src in sorted(lq.iterdir())]
    written: dict[int, list[tuple[str, str]]] = {}
    for depth in (0, 2):
        out = tmp_path / f"p{depth}"
        out.mkdir()
        seen = written.setdefault(depth, [])
        n = rcli.restore_stream(restorer, [(s, out / s.name, wh) for s, _, wh in items], batch_size=2,
                                prefetch=depth, read=load_image, seed=3,
                                on_written=lambda d: seen.append((d.name, threading.current_thread().name)))
        assert n == 5
    names = [f"f{i:02d}.png" for i in range(5)]
    assert [d for d, _ in written[0]] == [d for d, _ in written[2]] == names       # in order, each once
    assert {t for _, t in written[0]} == {threading.current_thread().name}         # 0: no thread
    assert {t for _, t in written[2]} == {"nifi-writer_0"}                         # 2: the writer thread
    a, b = _arrays(tmp_path / "p0"), _arrays(tmp_path / "p2")
    assert sorted(a) == names and all(np.array_equal(a[k], b[k]) for k in a)    # bit for bit
    assert a["f03.png"].shape == (24, 16, 3)
    # each file is the frame restored on its own and quantised the usual way (io.images.to_uint8 on the host;
    # the loop quantises on the device, to_uint8_hwc, before the copy)
    for src, _, _ in items:
        alone = restorer.restore(to_model_range(load_image(src)[None]), seed=[3])[0]
        assert np.array_equal(a[src.name], to_uint8(to_unit_range(alone))), src.name
    with pytest.raises(rcli.RestoreInputError, match="--prefetch -1"):
        rcli.restore_stream(restorer, items, batch_size=2, prefetch=-1, read=load_image, seed=3)


def test_restore_stream_png_writers_and_level(tmp_path):
    """PNG encoding threads write the same files in the same order; a lower zlib level the same pixels."""
    lq = _folder(tmp_path / "lq", [(24, 16)] * 5)
    restorer = Restorer(tiny_backbone(seed=0), adapter=None)
    items = [(src, probe_rgb(src)) for src in sorted(lq.iterdir())]
    runs = {"w1": (1, None), "w3": (3, None), "w3_l1": (3, 1), "w2_l0": (2, 0)}
    order: dict[str, list[str]] = {}
    for name, (writers, level) in runs.items():
        out = tmp_path / name
        out.mkdir()
        seen = order.setdefault(name, [])
        n = rcli.restore_stream(restorer, [(s, out / s.name, wh) for s, wh in items], batch_size=4, prefetch=2,
                                read=load_image, seed=1, writers=writers, png_level=level,
                                on_written=lambda d: seen.append(d.name))
        assert n == 5
    names = [f"f{i:02d}.png" for i in range(5)]
    assert all(o == names for o in order.values())
    raw = {k: {f: (tmp_path / k / f).read_bytes() for f in names} for k in runs}
    assert raw["w1"] == raw["w3"]                               # the same bytes with 3 encoding threads
    px = {k: _arrays(tmp_path / k) for k in runs}
    for k in ("w3_l1", "w2_l0"):                                 # lossless at any level: the same pixels
        assert all(np.array_equal(px["w1"][f], px[k][f]) for f in names)
    size = {k: sum(len(b) for b in raw[k].values()) for k in runs}
    assert size["w2_l0"] > size["w3_l1"] >= size["w1"]           # level 0 stores, level 1 compresses less than 6
    for bad, match in (({"writers": 0}, "--writers 0"), ({"png_level": 10}, "--png_level 10")):
        with pytest.raises(rcli.RestoreInputError, match=match):
            rcli.restore_stream(restorer, [], batch_size=1, prefetch=0, read=load_image, seed=0, **bad)


def test_tiny_stream_bench_times_the_loop_at_each_prefetch_depth(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))   # where the frames go: checked empty after
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    rc = gpu.main(["--tiny", "--device", "cpu", "--part", "stream", "--no-compile", "--iters", "1", "--out", str(out)])
    assert rc == 0
    st = json.loads((out / "bench.json").read_text())["stream"]
    assert (st["size"], st["frames"], st["batch"], st["variant"]) == ("64x96", 8, 2, "eager")
    # the default modes: the plain loop, prefetch, + 4 PNG encoding threads, + PNG level 1
    assert list(st["rows"]) == ["p0_w1", "p2_w1", "p2_w4", "p2_w4_l1"]
    assert [(r["prefetch"], r["writers"], r["png_level"]) for r in st["rows"].values()] == [
        (0, 1, None), (2, 1, None), (2, 4, None), (2, 4, 1)]
    for row in st["rows"].values():
        assert row["frames"] == 8 and row["fps"] > 0 and row["ms_per_frame"] == pytest.approx(1e3 / row["fps"])
        assert row["output_mib"] > 0
    assert st["identical_outputs"] is True
    assert all(st["rows"][k]["identical_to_first"] is True for k in ("p2_w1", "p2_w4", "p2_w4_l1"))
    assert st["model_only"]["ms_per_frame"] > 0 and st["first_batch_s"] > 0
    assert st["decode_ms_per_frame"] > 0 and st["encode_ms_per_frame"] > 0
    assert list((tmp_path / "tmp").iterdir()) == []                   # the temporary folders are gone
    summary = (out / "summary.md").read_text()
    assert "| prefetch | PNG writers | PNG level | frames/s | ms/frame | model-only ms/frame | host share |" in summary
    assert "identical outputs across modes: True" in summary
    # a part that does not exist is refused before anything runs
    assert gpu.main(["--tiny", "--device", "cpu", "--order", "restore,nope", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    # so is a mode that does not parse
    assert gpu.main(["--tiny", "--device", "cpu", "--part", "stream", "--stream-modes", "0,2:x",
                     "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()


def test_tiny_stream_bench_runs_the_chunked_vae_attention_when_asked(tmp_path, monkeypatch):
    """``--vae-attention chunked`` puts the chunked 512-wide head (diffusion.vae_attention) into the stream's
    restorer, and the pixels it writes match SDPA's within one 8-bit level (the two compute the same function)."""
    from nifi_lib.diffusion import vae_attention

    kinds = []
    real = vae_attention.set_vae_attention

    def spy(vae, kind, *a, **k):
        kinds.append(kind)
        return real(vae, kind, *a, **k)

    monkeypatch.setattr(vae_attention, "set_vae_attention", spy)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    common = ["--tiny", "--device", "cpu", "--part", "stream", "--no-compile", "--iters", "1",
              "--stream-frames", "2", "--stream-modes", "0"]
    assert gpu.main(common + ["--vae-attention", "chunked", "--out", str(tmp_path / "c")]) == 0
    assert kinds == ["chunked"]
    st = json.loads((tmp_path / "c" / "bench.json").read_text())["stream"]
    assert st["vae_attention"] == "chunked" and st["rows"]["p0_w1"]["frames"] == 2
    assert "VAE attention chunked" in (tmp_path / "c" / "summary.md").read_text()
    assert gpu.stream_vae_attention(gpu.build_parser().parse_args(["--vae-attention", "both"])) == "sdpa"
