"""Bad images through ``nifi restore``, ``nifi eval`` and ``nifi train``: a one-line error naming the file and
the problem, exit code 2, and nothing already written changed (no half-written output folder or file)."""
from __future__ import annotations

import io
import resource
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faultkit import assert_cli_error, copytree, leftovers, snapshot

# ------------------------------------------------------------------------------------ bad files


def _rgb(size=(32, 32), seed=3) -> np.ndarray:
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_corrupt_png(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)   # PNG signature, no valid chunks
    return path


def write_truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut
    return path


def write_png16(path: Path, size=(32, 32)) -> Path:
    """A 16-bit RGB PNG (PIL opens it as mode 'RGB' and would silently drop the low bytes)."""
    w, h = size
    arr = (np.random.default_rng(0).random((h, w, 3)) * 65535).astype(">u2")
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    return path


def write_rgba(path: Path) -> Path:
    Image.fromarray(_rgb()).convert("RGBA").save(path)
    return path


def write_grey(path: Path) -> Path:
    Image.fromarray(_rgb()).convert("L").save(path)
    return path


_HUGE: dict[str, bytes] = {}


def write_huge(path: Path, side: int = 20000) -> Path:
    """A valid 20000x20000 8-bit RGB PNG of 5 MB (all-zero rows compress ~230:1); decoding it would need
    1.2 GB. Built once per session, streamed row by row."""
    if side not in _HUGE:
        co = zlib.compressobj(1)
        row = bytes(1 + 3 * side)
        idat = b"".join(co.compress(row) for _ in range(side)) + co.flush()
        _HUGE[side] = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                       + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    path.write_bytes(_HUGE[side])
    return path


# name -> (writer, file suffix, words the error message must contain)
DEFECTS = {
    "corrupt_png": (write_corrupt_png, ".png", ["cannot decode"]),
    "truncated_jpeg": (write_truncated_jpeg, ".jpg", ["cannot decode", "truncated"]),
    "png16": (write_png16, ".png", ["more than 8 bits"]),
    "rgba": (write_rgba, ".png", ["RGBA", "expected 8-bit RGB"]),
    "grey": (write_grey, ".png", ["mode is L", "expected 8-bit RGB"]),
    "huge_20000px": (write_huge, ".png", ["20000x20000", "exceeds the limit", "refused before decoding"]),
}
# defects visible in the file header: refused by the pair scan of `nifi train` before anything is written
HEADER_DEFECTS = ["corrupt_png", "png16", "rgba", "grey", "huge_20000px"]


def plant(defect: str, folder: Path, stem: str) -> Path:
    """Replace ``folder/<stem>.*`` by the defective file (same stem, so pairs still match by name)."""
    for p in folder.glob(f"{stem}.*"):
        p.unlink()
    writer, suffix, _ = DEFECTS[defect]
    return writer(folder / f"{stem}{suffix}")


class MaxRSS:
    """Peak resident memory must not grow by ``limit_mb`` (a 20000x20000 RGB decode is 1200 MB)."""

    def __init__(self, limit_mb: int = 400):
        self.limit = limit_mb * 1024  # ru_maxrss is in KiB on Linux

    def __enter__(self):
        self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.before
        assert grown < self.limit, f"peak memory grew by {grown // 1024} MB: the image was decoded"


# ------------------------------------------------------------------------------------ nifi restore

@pytest.mark.parametrize("defect", list(DEFECTS))
def test_restore_refuses_bad_image(defect, models, nifi, tmp_path):
    """`nifi restore --lq <folder>`: every input is checked before the model loads; the output folder of an
    earlier run is left exactly as it was."""
    lq = tmp_path / "lq"
    lq.mkdir()
    Image.fromarray(_rgb(seed=1)).save(lq / "a_good.png")
    bad = plant(defect, lq, "b_bad")
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(_rgb(seed=2)).save(out / "a_good.png")   # from an earlier run
    before = snapshot(out)
    with MaxRSS():
        res = nifi("restore", "--base_model", models["backbone"], "--ckpt", models["ckpt"], "--lq", lq,
                   "--out", out, "--device", "cpu")
    assert_cli_error(res, "restore", bad.name, *DEFECTS[defect][2])
    assert snapshot(out) == before and not leftovers(out)


@pytest.mark.parametrize("defect", ["rgba", "grey"])
def test_restore_offers_allow_convert(defect, models, nifi, tmp_path):
    """A greyscale or RGBA input: the refusal names the CLI flag (not the Python keyword); with
    ``--allow_convert`` it is restored (RGBA composited on ``--background``)."""
    lq = tmp_path / "lq"
    lq.mkdir()
    bad = plant(defect, lq, "frame")
    out = tmp_path / "out"
    res = nifi("restore", "--base_model", models["backbone"], "--lq", lq, "--out", out, "--device", "cpu")
    msg = assert_cli_error(res, "restore", bad.name, "--allow_convert", *DEFECTS[defect][2])
    assert "allow_convert=True" not in msg and not out.exists()
    res = nifi("restore", "--base_model", models["backbone"], "--lq", lq, "--out", out, "--device", "cpu",
               "--allow_convert", "--background", "black")
    assert res.rc == 0, res.err
    assert np.asarray(Image.open(out / "frame.png")).shape == (32, 32, 3)


def test_restore_refuses_empty_folder(models, nifi, tmp_path):
    (tmp_path / "lq").mkdir()
    res = nifi("restore", "--base_model", models["backbone"], "--lq", tmp_path / "lq", "--out", tmp_path / "out")
    assert_cli_error(res, "restore", str(tmp_path / "lq"), "no images")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ nifi eval

def _eval(nifi, root: Path, out: Path, save: Path, *extra):
    return nifi("eval", "--data_root", root, "--split", "test", "--out", out, "--method", "none",
                "--metrics", "psnr", "ssim", "--device", "cpu", "--save_outputs", save, *extra)


@pytest.fixture
def eval_outputs(tmp_path):
    """metrics.json of an earlier eval run; its bytes must survive a failed run."""
    out = tmp_path / "results" / "metrics.json"
    out.parent.mkdir()
    out.write_text('{"metrics": "from an earlier run"}\n')
    return out


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_eval_refuses_bad_image(defect, pairs_copy, eval_outputs, nifi, tmp_path):
    """`nifi eval`: every pair is decoded before the first restored frame is written, so a bad file in the
    LAST scene leaves neither a half-filled --save_outputs folder nor a changed metrics.json."""
    bad = plant(defect, pairs_copy / "s2" / "rate_1.0" / "test" / "degraded", "000")
    before = snapshot(eval_outputs.parent)
    with MaxRSS():
        res = _eval(nifi, pairs_copy, eval_outputs, tmp_path / "restored")
    assert_cli_error(res, "eval", str(bad), *DEFECTS[defect][2])
    assert snapshot(eval_outputs.parent) == before and not leftovers(eval_outputs.parent)
    assert not (tmp_path / "restored").exists()


# ------------------------------------------------------------------------------------ nifi train

def _train(nifi, cfg, root, exp, *extra):
    return nifi("train", "--config", cfg, "--data_root", root, "--exp", exp, "--device", "cpu", *extra)


@pytest.mark.parametrize("defect", HEADER_DEFECTS)
def test_train_refuses_bad_image(defect, train_config, pairs_copy, exp_copy, nifi):
    """`nifi train`: the pair scan reads every header (mode, bit depth, size limit) before the run folder is
    touched; the checkpoints and log of the earlier run in --exp stay byte-identical."""
    bad = plant(defect, pairs_copy / "s2" / "rate_1.0" / "train" / "clean", "002")
    before = snapshot(exp_copy)
    with MaxRSS():
        res = _train(nifi, train_config, pairs_copy, exp_copy)
    assert_cli_error(res, "train", str(bad), *DEFECTS[defect][2])
    assert snapshot(exp_copy) == before and not leftovers(exp_copy)


def test_train_stops_cleanly_on_image_truncated_after_its_header(train_config, pairs_copy, exp_copy, nifi):
    """A JPEG cut after its header passes the header scan and fails when a step first samples it: training
    stops with a one-line error naming the file, and --exp keeps a loadable checkpoint of the last saved step
    (``--resume`` continues from it once the file is fixed)."""
    from nifi_lib.restoration.io import safe_torch_load

    folder = pairs_copy / "s1" / "rate_0.1" / "train"
    bads = [plant("truncated_jpeg", folder / side, f"{j:03d}") for j in range(3) for side in ("clean", "degraded")]
    res = _train(nifi, train_config, pairs_copy, exp_copy, "--resume", "--set", "train.max_steps=40")
    assert_cli_error(res, "train", "truncated")
    assert any(str(b) in res.err for b in bads)
    ck = safe_torch_load(exp_copy / "latest.pt")
    assert ck["step"] >= 2 and all(np.isfinite(v.numpy()).all() for v in ck["adapters"].values())
    assert not leftovers(exp_copy)


# ------------------------------------------------------------------------------------ pair structure
# each maker damages <root>/s2/rate_1.0/<split>/ and returns the path the error message must name

def _mismatched_sizes(root: Path, split: str) -> Path:
    p = root / "s2" / "rate_1.0" / split / "degraded" / "000.png"
    Image.fromarray(_rgb((40, 32))).save(p)
    return p


def _missing_partner(root: Path, split: str) -> Path:
    (root / "s2" / "rate_1.0" / split / "clean" / "000.png").unlink()
    return root / "s2" / "rate_1.0" / split


def _empty_split(root: Path, split: str) -> Path:
    d = root / "s2" / "rate_1.0" / split
    for side in ("clean", "degraded"):
        for p in (d / side).iterdir():
            p.unlink()
    return d


PAIR_DEFECTS = {
    "mismatched_sizes": (_mismatched_sizes, ["000.png", "40x32", "32x32"]),
    "missing_partner": (_missing_partner, ["unmatched", "000"]),
    "empty_split": (_empty_split, ["no images"]),
}


@pytest.mark.parametrize("defect", list(PAIR_DEFECTS))
def test_eval_refuses_bad_pairs(defect, pairs_copy, eval_outputs, nifi, tmp_path):
    make, words = PAIR_DEFECTS[defect]
    named = make(pairs_copy, "test")
    before = snapshot(eval_outputs.parent)
    res = _eval(nifi, pairs_copy, eval_outputs, tmp_path / "restored")
    assert_cli_error(res, "eval", str(named), *words)
    assert snapshot(eval_outputs.parent) == before and not (tmp_path / "restored").exists()


@pytest.mark.parametrize("defect", list(PAIR_DEFECTS))
def test_train_refuses_bad_pairs(defect, pairs_copy, train_config, exp_copy, nifi):
    make, words = PAIR_DEFECTS[defect]
    named = make(pairs_copy, "train")
    before = snapshot(exp_copy)
    res = _train(nifi, train_config, pairs_copy, exp_copy)
    assert_cli_error(res, "train", str(named), *words)
    assert snapshot(exp_copy) == before and not leftovers(exp_copy)


@pytest.mark.parametrize("defect", ["missing_partner", "rgba"])
def test_train_never_reads_the_test_split(defect, pairs_copy, train_config, tmp_path, nifi):
    """Checkpoints are chosen on held-out *training* views: training neither validates on nor even opens the
    test split, so a broken test split cannot change it; the held-out views come from the train split."""
    import json

    if defect == "missing_partner":
        _missing_partner(pairs_copy, "test")
    else:
        plant("rgba", pairs_copy / "s1" / "rate_0.1" / "test" / "clean", "000")
    res = _train(nifi, train_config, pairs_copy, tmp_path / "exp", "--set", "train.max_steps=2")
    assert res.rc == 0, res.err[-2000:]
    summary = json.loads((tmp_path / "exp" / "train_summary.json").read_text())
    assert summary["val_split"] == "train_holdout" and summary["validation_images"]
    assert all("/train/" in f and "/test/" not in f for f in summary["validation_images"])
