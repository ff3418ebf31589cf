"""`nifi restore` end to end on a tiny backbone folder: PNG and folder inputs, bad inputs, nothing half-written."""
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import randomize_lora, tiny_backbone
from nifi_lib.cli import main
from nifi_lib.restoration.checkpoint import save_authors_checkpoint
from nifi_lib.restoration.lora import RESTORER, add_restorer_adapters


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bb")
    bb = tiny_backbone(seed=0)
    bb.save_pretrained(root / "backbone", info={"note": "test"})
    add_restorer_adapters(bb, rank=2)
    randomize_lora(bb.transformer, RESTORER, seed=1)
    save_authors_checkpoint(root / "r.ckpt", bb)
    return root


def _png(path, size=(24, 20), mode="RGB"):
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def test_restore_png_and_folder(model_dir, tmp_path):
    lq = _png(tmp_path / "a.png")
    out = tmp_path / "out.png"
    rc = main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
               "--lq", str(lq), "--out", str(out), "--device", "cpu", "--seed", "1"])
    assert rc == 0
    res = np.asarray(Image.open(out))
    assert res.shape == (20, 24, 3) and res.dtype == np.uint8
    folder = tmp_path / "lq"
    folder.mkdir()
    for n in ("x", "y"):
        _png(folder / f"{n}.png")
    rc = main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
               "--lq", str(folder), "--out", str(tmp_path / "outdir"), "--seed", "1"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["x.png", "y.png"]
    # same seed, same input: identical to the single-file run
    assert np.array_equal(np.asarray(Image.open(tmp_path / "outdir" / "x.png")), res)


@pytest.mark.parametrize("kind", ["rgba", "grey", "16bit", "corrupt"])
def test_bad_images_are_named_and_nothing_is_written(model_dir, tmp_path, capsys, kind):
    folder = tmp_path / "lq"
    folder.mkdir()
    _png(folder / "good.png")
    bad = folder / "bad.png"
    if kind == "rgba":
        _png(bad, mode="RGBA")
    elif kind == "grey":
        _png(bad, mode="L")
    elif kind == "16bit":
        Image.fromarray((np.arange(400).reshape(20, 20) * 100).astype(np.uint16)).save(bad)
    else:
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    out = tmp_path / "out"
    rc = main(["restore", "--base_model", str(model_dir / "backbone"), "--lq", str(folder), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.png" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["missing", "truncated", "unexpected_keys", "pickle_code", "wrong_rank"])
def test_bad_checkpoints(model_dir, tmp_path, capsys, kind):
    lq = _png(tmp_path / "a.png")
    ck = tmp_path / "bad.ckpt"
    marker = tmp_path / "pwned"
    if kind == "truncated":
        data = (model_dir / "r.ckpt").read_bytes()
        ck.write_bytes(data[: len(data) // 2])
    elif kind == "unexpected_keys":
        obj = torch.load(model_dir / "r.ckpt", weights_only=True)
        obj["transformer"]["transformer_blocks.99.attn.to_q.lora_A.weight"] = torch.zeros(2, 16)
        torch.save(obj, ck)
    elif kind == "pickle_code":
        import os
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        ck.write_bytes(pickle.dumps({"vae": Evil(), "transformer": {}}))
    elif kind == "wrong_rank":
        bb = tiny_backbone(seed=0)
        add_restorer_adapters(bb, rank=3)
        save_authors_checkpoint(ck, bb)
        obj = torch.load(ck, weights_only=True)
        obj["vae"] = {k: v[:2] if k.endswith("lora_A.weight") else v for k, v in obj["vae"].items()}
        torch.save(obj, ck)
    out = tmp_path / "out.png"
    rc = main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(ck), "--lq", str(lq),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "bad.ckpt" in err
    assert not out.exists()
    assert not marker.exists(), "unpickling executed code"


def test_missing_backbone_is_clear(tmp_path, capsys):
    lq = _png(tmp_path / "a.png")
    rc = main(["restore", "--base_model", str(tmp_path / "nope"), "--lq", str(lq), "--out", str(tmp_path / "o.png")])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
