"""`nifi render-path` on the embedded scene at tiny size: an mp4 that reads back with its frame count, the three
frame folders, render_path.json with the flicker numbers; resume, the test path's photos, a nerfstudio JSON path;
and the flicker function itself."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nifi_lib.cli import main
from nifi_lib.evaluation.render_path import (RenderPathError, _side_by_side, flicker_summary, render_path,
                                             temporal_error, temporal_flicker)
from nifi_lib.paths import EMBEDDED_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCENE = EMBEDDED_DIR / "scenes" / "boxes"
BACKBONE = EMBEDDED_DIR / "backbone"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    if not (SCENE.is_dir() and BACKBONE.is_dir()):
        pytest.skip("embedded scene or backbone not available")
    from nifi_lib.synthesis.pipeline import SynthesisSettings, synthesize_scene

    art = tmp_path_factory.mktemp("art") / "boxes"
    synthesize_scene(SCENE, art, SynthesisSettings(c_min=32, n_top=96, finetune_iterations=5, importance_views=4,
                                                   device="cpu"), progress=False, log=lambda *_: None)
    return art


def _frames(mp4: Path) -> list[np.ndarray]:
    import imageio.v2 as iio

    with iio.get_reader(str(mp4)) as r:
        return [f for f in r]


def test_temporal_flicker_values():
    still = [torch.full((3, 4, 4), 0.5)] * 5
    assert temporal_flicker(still) == 0.0
    ramp = [torch.full((3, 4, 4), 0.1 * t) for t in range(4)]
    assert temporal_flicker(ramp) == pytest.approx(0.1)
    alternating = [torch.zeros(3, 2, 2), torch.ones(3, 2, 2)] * 3
    assert temporal_flicker(alternating) == pytest.approx(1.0)
    assert temporal_flicker(iter(ramp[:1])) is None                  # one frame: undefined
    assert temporal_error(ramp, ramp) == 0.0                         # moves exactly as the reference
    assert temporal_error(still[:4], ramp) == pytest.approx(0.1)     # frozen while the reference moves
    noisy = [r + (0.05 if t % 2 else 0.0) for t, r in enumerate(ramp)]
    assert temporal_error(noisy, ramp) == pytest.approx(0.05)        # flicker on top of the motion
    s = flicker_summary({"compressed": 0.3, "restored": 0.2, "clean": 0.1})
    assert s["restored_over_clean"] == pytest.approx(2.0) and s["compressed_over_clean"] == pytest.approx(3.0)
    assert flicker_summary({"compressed": None, "restored": None, "clean": None})["restored_over_clean"] is None
    frame = _side_by_side([np.zeros((5, 3, 3), np.uint8)] * 3)     # odd sides padded to even for yuv420p
    assert frame.shape == (6, 14, 3) and (frame[:5, 3:5] == 255).all()


def test_cli_spiral_writes_mp4_frames_and_flicker_then_resumes(artifacts, tmp_path, capsys):
    out = tmp_path / "spiral"
    args = ["render-path", "--artifacts", str(artifacts), "--rate", "0.1", "--path", "spiral", "--frames", "6",
            "--out", str(out), "--device", "cpu", "--batch_size", "4", "--fps", "12"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "flicker (mean |f_t+1 - f_t|)" in text and "dense render (full.ply)" in text
    s = json.loads((out / "render_path.json").read_text())
    for stream in ("compressed", "restored", "clean"):
        assert sorted(p.name for p in (out / stream).iterdir()) == [f"{i:05d}.png" for i in range(6)]
        assert 0 < s["flicker"][stream] < 1
    assert s["clean_source"] == "dense render (full.ply)" and s["made_now"] == 6 and s["t0"] == 199
    assert s["flicker"]["restored_over_clean"] == pytest.approx(s["flicker"]["restored"] / s["flicker"]["clean"])
    assert all(0 < s["temporal_error_vs_clean"][k] < 1 for k in ("compressed", "restored"))
    mp4 = out / "render_path.mp4"
    assert mp4.stat().st_size > 0 and s["video_frames"] == 6
    frames = _frames(mp4)
    assert len(frames) == 6 and frames[0].shape == (64, 3 * 64 + 2 * 2, 3)
    # the video's middle panel is the restored frame (lossy H.264: close, not equal)
    from nifi_lib.io.images import load_image
    restored = (load_image(out / "restored" / "00003.png").permute(1, 2, 0).numpy() * 255)
    assert np.abs(frames[3][:, 66:130].astype(float) - restored).mean() < 12
    # resumed: nothing made again, same numbers
    before = (out / "restored" / "00002.png").stat().st_mtime_ns
    assert main(args) == 0
    again = json.loads((out / "render_path.json").read_text())
    assert again["made_now"] == 0 and again["flicker"] == s["flicker"]
    assert (out / "restored" / "00002.png").stat().st_mtime_ns == before
    # other settings into the same folder: refused, nothing touched
    assert main(args[:-6] + ["--frames", "5", "--out", str(out), "--device", "cpu"]) == 2
    assert "other settings (frames)" in capsys.readouterr().err


def test_test_path_uses_photos_and_a_json_path_round_trips(artifacts, tmp_path):
    from nifi_lib.gs.camera_paths import write_camera_path
    from nifi_lib.synthesis.scene import open_scene

    s = render_path(artifacts, "1.0", "test", tmp_path / "test", frames=2, device="cpu", progress=False,
                    log=lambda *_: None)
    assert s["clean_source"] == "photo (test view)" and s["frames"] == 2 and "flicker_note" in s
    photo = open_scene(SCENE).views("test")[1].image_path
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(tmp_path / "test" / "clean" / "00001.png")),
                          np.asarray(__import__("PIL.Image").Image.open(photo).convert("RGB")))
    # a nerfstudio camera path of two training cameras renders those cameras
    cams = [v.camera for v in open_scene(SCENE).views("train")[:2]]
    write_camera_path(tmp_path / "path.json", cams)
    j = render_path(artifacts, "1.0", str(tmp_path / "path.json"), tmp_path / "json", device="cpu", progress=False,
                    log=lambda *_: None)
    assert j["frames"] == 2 and j["size"] == [64, 64] and j["video_frames"] == 2
    with pytest.raises(RenderPathError, match="rates: "):
        render_path(artifacts, "7", "spiral", tmp_path / "x", progress=False)
    with pytest.raises(RenderPathError, match="test, spiral, interp"):
        render_path(artifacts, "1.0", "zigzag", tmp_path / "x", progress=False)
