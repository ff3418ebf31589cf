"""`nifi restore` end to end on a tiny backbone folder: PNG and folder inputs, bad inputs, nothing half-written."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_backbone
from nifi_lib.cli import main
from nifi_lib.restoration.checkpoint import save_authors_checkpoint
from nifi_lib.restoration.lora import add_restorer_adapters


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


def test_vae_attention_chunked_restores_the_same_frame(model_dir, tmp_path):
    """``--vae_attention chunked``: the VAE's attention as GEMMs + a float32 softmax (diffusion/vae_attention.py),
    the same function: the same PNG within one 8-bit level of the default processor's (fp32 on the CPU)."""
    from diffusers.models.attention_processor import Attention

    from nifi_lib.diffusion.backbone import load_backbone

    assert any(isinstance(m, Attention) for m in load_backbone(str(model_dir / "backbone")).vae.modules())
    lq = _png(tmp_path / "a.png")
    outs = {}
    for kind in ("sdpa", "chunked"):
        outs[kind] = tmp_path / f"{kind}.png"
        assert main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
                     "--lq", str(lq), "--out", str(outs[kind]), "--device", "cpu", "--vae_attention", kind]) == 0
    a, b = (np.asarray(Image.open(outs[k])).astype(int) for k in ("sdpa", "chunked"))
    assert a.shape == b.shape == (20, 24, 3) and np.abs(a - b).max() <= 1


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


# ------------------------------------------------------------------ the authors' flags and ordinary inputs

def _restore(model_dir, lq, out, *extra):
    return main(["restore", "--base_model", str(model_dir / "backbone"), "--ckpt", str(model_dir / "r.ckpt"),
                 "--lq", str(lq), "--out", str(out), "--device", "cpu", "--seed", "1", *extra])


@pytest.mark.parametrize("short,long", [("f32", "fp32"), ("f16", "fp16")])
def test_authors_dtype_spellings(model_dir, tmp_path, short, long):
    """inference.py's --dtype f16|f32 are accepted and mean fp16|fp32 (the long spellings still work)."""
    lq = _png(tmp_path / "a.png")
    assert _restore(model_dir, lq, tmp_path / "s.png", "--dtype", short) == 0
    assert _restore(model_dir, lq, tmp_path / "l.png", "--dtype", long) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), np.asarray(Image.open(tmp_path / "l.png")))


@pytest.mark.parametrize("device,attr", [("cuda", "cuda"), ("cuda:0", "cuda"), ("mps", "mps")])
def test_missing_accelerator_is_a_clear_error(model_dir, tmp_path, capsys, monkeypatch, device, attr):
    if attr == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    else:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    lq = _png(tmp_path / "a.png")
    out = tmp_path / "o.png"
    rc = main(["restore", "--base_model", str(model_dir / "backbone"), "--lq", str(lq), "--out", str(out),
               "--device", device])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"nifi restore: error: --device {device} requested but no" in err and "use --device cpu" in err
    assert "torch " in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P"])
def test_grey_and_rgba_need_allow_convert(model_dir, tmp_path, capsys, mode):
    lq = _png(tmp_path / "a.png", mode=mode)
    out = tmp_path / "o.png"
    assert _restore(model_dir, lq, out) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and f"mode is {mode}" in err and "--allow_convert" in err
    assert "allow_convert=True" not in err      # the CLI names its flag, not the Python keyword
    assert not out.exists()
    for bg in ("white", "black"):
        assert _restore(model_dir, lq, tmp_path / f"{bg}.png", "--allow_convert", "--background", bg) == 0
        res = np.asarray(Image.open(tmp_path / f"{bg}.png"))
        assert res.shape == (20, 24, 3) and res.dtype == np.uint8


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["restore", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default: data/embedded/backbone" in text                     # --base_model
    assert "default: the checkpoint's t0, else 199" in text               # --t0
    assert "default: 0" in text                                           # --seed
    assert "default: bf16 on CUDA, fp32 otherwise" in text                # --dtype
    assert "f16" in text and "f32" in text and "--allow_convert" in text and "default: white" in text


def test_t0_defaults_to_none_for_the_checkpoint(model_dir, tmp_path, monkeypatch):
    """Without --t0 the restorer is asked for the checkpoint's t0 (None); --t0 N is passed as given."""
    from nifi_lib.restoration import restorer as mod

    seen = []
    real = mod.Restorer.from_pretrained.__func__

    def spy(cls, *a, **kw):
        seen.append(kw.get("t0"))
        return real(cls, *a, **kw)

    monkeypatch.setattr(mod.Restorer, "from_pretrained", classmethod(spy))
    lq = _png(tmp_path / "a.png")
    assert _restore(model_dir, lq, tmp_path / "a_out.png") == 0
    assert _restore(model_dir, lq, tmp_path / "b_out.png", "--t0", "150") == 0
    assert seen == [None, 150]


EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "embedded" / "backbone"


@pytest.mark.skipif(not EMBEDDED.is_dir(), reason="embedded backbone not available")
def test_frame_beyond_position_table_is_tiled_and_said_once(tmp_path, capsys):
    """504x378 on the embedded backbone (position table 48 x patch 2 x VAE 4 = 384 px): restored in tiles,
    announced once for the whole run, output the size of the input."""
    folder = tmp_path / "lq"
    folder.mkdir()
    for n in ("x", "y"):
        _png(folder / f"{n}.png", size=(504, 378))
    out = tmp_path / "out"
    rc = main(["restore", "--base_model", str(EMBEDDED), "--lq", str(folder), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("exceeds the backbone's position table") == 1, err
    assert "frame 504x378 exceeds the backbone's position table (max 384 px): restoring in 2 overlapping tiles" in err
    for n in ("x", "y"):
        assert np.asarray(Image.open(out / f"{n}.png")).shape == (378, 504, 3)


def test_compile_and_size_bucket_reach_the_restorer(model_dir, tmp_path, monkeypatch, capsys):
    """``--compile`` asks for the optimised restorer (phi- fused, torch.compile; CUDA graphs on CUDA: the fast
    paths of docs/performance.md, checked against the eager path in tests/test_perf_paths.py) and ``--size_bucket``
    is passed through; a bucket that is not a multiple of the backbone's unit is a clear error, nothing written."""
    from nifi_lib.restoration import restorer as mod

    seen = []
    real = mod.Restorer.from_pretrained.__func__

    def spy(cls, *a, **kw):
        seen.append({k: kw.get(k) for k in ("compile", "fuse_lora", "size_bucket")})
        kw["compile"] = False      # the wiring only: compiling on this CPU costs a minute
        return real(cls, *a, **kw)

    monkeypatch.setattr(mod.Restorer, "from_pretrained", classmethod(spy))
    lq = _png(tmp_path / "a.png")
    assert _restore(model_dir, lq, tmp_path / "a_out.png") == 0
    assert _restore(model_dir, lq, tmp_path / "b_out.png", "--compile", "--size_bucket", "32") == 0
    assert seen == [{"compile": False, "fuse_lora": False, "size_bucket": None},
                    {"compile": True, "fuse_lora": True, "size_bucket": 32}]
    assert np.asarray(Image.open(tmp_path / "b_out.png")).shape == (20, 24, 3)
    capsys.readouterr()
    assert _restore(model_dir, lq, tmp_path / "c_out.png", "--size_bucket", "12") != 0
    err = capsys.readouterr().err
    assert "size_bucket 12" in err and "multiple of" in err and "Traceback" not in err
    assert not (tmp_path / "c_out.png").exists()
