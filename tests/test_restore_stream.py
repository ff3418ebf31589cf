"""`nifi restore` on a folder at scale: streamed (a lazy reader), batched (same frames as one by one), resumable
(a second run skips what the first wrote), and per-frame seeds in ``Restorer.restore``."""
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import folder_of_frames as _folder, restore_folder as _restore, png_arrays as _arrays, tiny_backbone
from nifi_lib.restoration import cli as rcli
from nifi_lib.restoration.restorer import Restorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_batched_folder_equals_one_by_one_and_resumes(model_dir, tmp_path, capsys):
    lq = _folder(tmp_path / "lq", [(24, 16)] * 3 + [(16, 24)] * 2)   # two sizes: batches never mix them
    assert _restore(model_dir, lq, tmp_path / "one", "--batch_size", "1") == 0
    assert _restore(model_dir, lq, tmp_path / "batched", "--batch_size", "3") == 0
    one, batched = _arrays(tmp_path / "one"), _arrays(tmp_path / "batched")
    assert sorted(one) == [f"f{i:02d}.png" for i in range(5)]
    for name in one:   # the same frame whatever the batch (per-frame generators); fp32 on CPU: at most 1/255
        diff = np.abs(one[name].astype(int) - batched[name].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, name
    assert one["f03.png"].shape == (24, 16, 3)

    # interrupted run: two frames missing, one of them "half written" never exists (atomic writes); the rerun
    # restores only the missing ones and leaves the others untouched
    out = tmp_path / "batched"
    (out / "f01.png").unlink()
    (out / "f04.png").unlink()
    before = {n: (out / n).stat().st_mtime_ns for n in ("f00.png", "f02.png", "f03.png")}
    capsys.readouterr()
    assert _restore(model_dir, lq, out, "--batch_size", "3") == 0
    cap = capsys.readouterr()
    assert "3 frame(s) already restored" in cap.err
    assert sorted(cap.out.split()) == sorted(str(out / n) for n in ("f01.png", "f04.png"))
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before
    again = _arrays(out)
    for name in again:
        assert np.abs(again[name].astype(int) - batched[name].astype(int)).max() <= 1, name
    # everything done: nothing is loaded or written; --overwrite redoes every frame
    assert _restore(model_dir, lq, out) == 0
    assert "5 frame(s) already restored" in capsys.readouterr().err
    assert _restore(model_dir, lq, out, "--overwrite", "--batch_size", "2") == 0
    assert len(capsys.readouterr().out.split()) == 5


def test_iter_batches_is_lazy_and_groups_same_size_runs():
    reads = []

    def read(src):
        reads.append(src)
        return torch.zeros(3, 2, 2)

    sizes = [(2, 2)] * 5 + [(4, 4)] + [(2, 2)] * 2
    items = ((Path(f"{i}.png"), Path(f"o{i}.png"), wh) for i, wh in enumerate(sizes))
    gen = rcli.iter_batches(items, 2, read)
    assert reads == []                                     # nothing read before the first batch is asked for
    dsts, frames = next(gen)
    assert [d.name for d in dsts] == ["o0.png", "o1.png"] and frames.shape == (2, 3, 2, 2)
    assert len(reads) == 2                                 # only the batch: no frame beyond it is read
    rest = [[d.name for d in b] for b, _ in gen]
    assert rest == [["o2.png", "o3.png"], ["o4.png"], ["o5.png"], ["o6.png", "o7.png"]]
    with pytest.raises(rcli.RestoreInputError, match="batch_size"):
        next(rcli.iter_batches(iter(()), 0, read))


def test_per_frame_seeds_match_single_frames():
    bb = tiny_backbone(seed=0)
    r = Restorer(bb, adapter=None)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = r.restore(x, seed=[5, 6, 5])
    singles = torch.cat([r.restore(x[i:i + 1], seed=s) for i, s in enumerate([5, 6, 5])])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0], r.restore(x[:1], seed=6)[0], atol=1e-3)   # the seed matters
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        r.restore(x, seed=[1, 2])
    # frames past the tile size go through overlapping tiles: still frame by frame the same as one by one
    r.tile_size, r.tile_overlap = 16, 8
    y = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tiled = r.restore(y, seed=[2, 2])
    torch.testing.assert_close(tiled, torch.cat([r.restore(y[i:i + 1], seed=2) for i in range(2)]), atol=1e-5, rtol=0)
