"""Issue 16 readers: LLFF (poses_bounds.npy), INRIA 3DGS output folders, nerfstudio splatfacto exports and gsplat
checkpoints, each written here by the project's own code from cameras/models we know and read back."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nifi_lib.data.colmap import ColmapCamera, ColmapImage, rotmat_to_qvec, write_model
from nifi_lib.data.inria import InriaError, parse_cfg_args, read_inria_cameras, write_inria_output
from nifi_lib.data.llff import cv_to_llff, llff_to_cv, read_poses_bounds, write_llff_scene
from nifi_lib.data.pretrained import (PretrainedError, apply_normalization, detect_model_format, load_pretrained,
                                      read_gsplat_checkpoint)
from nifi_lib.data.scenes import (SceneError, detect_layout, find_scenes, load_scene, load_scene_points,
                                  scene_pretrained_model)
from nifi_lib.gs.cameras import GL_TO_CV, Camera, look_at, write_scene_cameras
from nifi_lib.gs.model import load_ply, save_ply
from nifi_lib.gs.render import render
from nifi_lib.synthesis.scene import open_scene
from nifi_lib.synthesis.toy import toy_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cameras(n: int = 10, w: int = 64, h: int = 48, f: float = 55.0) -> list[Camera]:
    """Cameras on a forward-facing arc (LLFF-like), centred principal point, one focal length."""
    cams = []
    for i in range(n):
        a = -0.5 + i / max(n - 1, 1)
        eye = (3.0 * math.sin(a), -3.0 * math.cos(a), 0.4 + 0.05 * i)
        cams.append(Camera(f"img_{i:03d}.png", w, h, f, f, w / 2, h / 2, look_at(eye, (0.1, 0.0, 0.2)), None))
    return cams


def render_images(model, cams):
    with torch.no_grad():
        return torch.stack([render(model, c, backend="torch").image.clamp(0, 1) for c in cams])


KNOWN_POINTS = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [-0.4, 0.25, 0.1], [0.2, 0.4, -0.3]],
                            dtype=torch.float64)


def project64(cam: Camera, pts: torch.Tensor) -> torch.Tensor:
    w2c = cam.world_to_cam.double()
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    return torch.stack([cam.fx * pc[:, 0] / pc[:, 2] + cam.cx, cam.fy * pc[:, 1] / pc[:, 2] + cam.cy], 1)


# --------------------------------------------------------------------------- LLFF

def test_llff_convention_matches_nerf_load_llff_and_the_image_axes():
    cam = cameras(3)[1]
    c2w = np.linalg.inv(cam.world_to_cam.double().numpy())
    p = cv_to_llff(c2w)
    # independent reading: NeRF's load_llff_data makes OpenGL [right, up, back] = [R1, -R0, R2]; OpenGL -> OpenCV
    gl = np.eye(4)
    gl[:3, :4] = np.stack([p[:, 1], -p[:, 0], p[:, 2], p[:, 3]], axis=1)
    np.testing.assert_allclose(llff_to_cv(p), gl @ GL_TO_CV.double().numpy(), atol=1e-12)
    np.testing.assert_allclose(llff_to_cv(p), c2w, atol=1e-12)
    # the LLFF columns are the camera's down, right, backwards axes: a point below the camera centre (along
    # column 0) lands below the image centre, one along column 1 to the right, one along -column 2 in front
    centre = p[:, 3]
    ahead = torch.from_numpy(centre - 2.0 * p[:, 2])[None]
    below = torch.from_numpy(centre - 2.0 * p[:, 2] + 0.3 * p[:, 0])[None]
    right = torch.from_numpy(centre - 2.0 * p[:, 2] + 0.3 * p[:, 1])[None]
    u0, v0 = project64(cam, ahead)[0].tolist()
    assert abs(u0 - cam.cx) < 1e-4 and abs(v0 - cam.cy) < 1e-4
    ub, vb = project64(cam, below)[0].tolist()
    ur, vr = project64(cam, right)[0].tolist()
    assert vb > v0 + 5 and abs(ub - u0) < 1e-4
    assert ur > u0 + 5 and abs(vr - v0) < 1e-4


def test_llff_round_trip_reprojection_split_downscale_and_points(tmp_path):
    cams = cameras(10, 64, 48)
    model = toy_model(150, sh_degree=1, seed=3, radius=0.6)
    imgs = render_images(model, cams)
    pts_xyz = torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 1.0]])
    pts_rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 1.0]])
    root = tmp_path / "fern"
    write_llff_scene(root, cams, imgs, downscales=(2, 8), bounds=(0.5, 9.0), points=(pts_xyz, pts_rgb))
    poses, bounds = read_poses_bounds(root / "poses_bounds.npy")
    assert poses.shape == (10, 3, 5) and np.allclose(bounds, [[0.5, 9.0]] * 10)
    assert np.allclose(poses[:, :, 4], [[48, 64, 55.0]] * 10)
    assert detect_layout(root) == "llff"
    got = load_scene(root, split="all")
    assert [c.name for c in got] == [c.name for c in cams]
    assert got[0].image_path == root / "images" / "img_000.png"
    for g, w in zip(got, cams):
        assert (g.width, g.height, g.fx, g.fy, g.cx, g.cy) == (64, 48, 55.0, 55.0, 32.0, 24.0)
        # limited by the float32 storage of Camera.world_to_cam (~1e-7 relative)
        torch.testing.assert_close(project64(g, KNOWN_POINTS), project64(w, KNOWN_POINTS), atol=2e-5, rtol=0)
    # images_8: the focal length follows the 8x8 px file size
    small = load_scene(root, split="all", downscale=8)
    assert (small[0].width, small[0].height) == (8, 6) and small[0].image_path.parent.name == "images_8"
    for g, w in zip(small, cams):
        torch.testing.assert_close(project64(g, KNOWN_POINTS), project64(w, KNOWN_POINTS) / 8, atol=1e-5, rtol=0)
    # the standard hold-out: every 8th view
    assert [c.name for c in load_scene(root, split="test")] == ["img_000.png", "img_008.png"]
    assert len(load_scene(root, split="train")) == 8
    # the rendered images are what the model shows from the read-back cameras
    from nifi_lib.gs.cameras import load_camera_images

    back = render_images(model, got[:2])
    assert float((back - load_camera_images(got[:2])).abs().max()) <= 1 / 255 + 1e-6
    # sparse points for initialisation
    xyz, rgb = load_scene_points(root)
    torch.testing.assert_close(xyz, pts_xyz)
    torch.testing.assert_close(rgb, torch.round(pts_rgb * 255) / 255)
    # a scene with a complete COLMAP model next to poses_bounds.npy (Mip-NeRF360) stays COLMAP
    ccams = {1: ColmapCamera(1, "PINHOLE", 64, 48, np.array([55.0, 55.0, 32.0, 24.0]))}
    imgs_c = {i + 1: ColmapImage(i + 1, rotmat_to_qvec(c.world_to_cam.double().numpy()[:3, :3]),
                                 c.world_to_cam.double().numpy()[:3, 3], 1, c.name) for i, c in enumerate(cams)}
    write_model(root / "sparse" / "0", ccams, imgs_c, ext=".bin")
    assert detect_layout(root) == "colmap"


def test_llff_errors_name_the_file(tmp_path):
    cams = cameras(4, 16, 12, 14.0)
    root = tmp_path / "s"
    write_llff_scene(root, cams, torch.rand(4, 3, 12, 16))
    with pytest.raises(SceneError, match=r"images_4: image folder not found"):
        load_scene(root, downscale=4)
    (root / "images" / "img_003.png").unlink()
    with pytest.raises(SceneError, match=r"poses_bounds.npy: 4 poses but 3 images"):
        load_scene(root)
    np.save(root / "poses_bounds.npy", np.zeros((4, 15)))
    with pytest.raises(SceneError, match=r"poses_bounds.npy: expected an \(N, 17\) array"):
        load_scene(root)
    bad = Camera("x.png", 16, 12, 14.0, 15.0, 8.0, 6.0, torch.eye(4))
    with pytest.raises(SceneError, match="one focal length"):
        write_llff_scene(tmp_path / "t", [bad], torch.rand(1, 3, 12, 16))


# --------------------------------------------------------------------------- INRIA output folders

@pytest.fixture(scope="module")
def inria(tmp_path_factory):
    """A source scene (images/ at 64x48) and an INRIA output trained 'at -r 2' (cameras.json at 32x24)."""
    tmp = tmp_path_factory.mktemp("inria")
    cams = cameras(9, 64, 48)
    model = toy_model(120, sh_degree=2, seed=5, radius=0.6)
    imgs = render_images(model, cams)
    src = tmp / "source"
    write_llff_scene(src, cams, imgs)
    out = tmp / "output" / "run1"
    write_inria_output(out, [c.scaled(0.5) for c in cams], toy_model(20, sh_degree=2, seed=9), src, iteration=7000,
                       resolution=2, white_background=True)
    save_ply(model, out / "point_cloud" / "iteration_30000" / "point_cloud.ply")
    return out, src, cams, model, imgs


def test_inria_output_cameras_split_images_and_model(inria):
    out, src, cams, model, imgs = inria
    assert detect_layout(out) == "inria"
    assert parse_cfg_args(out / "cfg_args")["source_path"] == str(src)
    got = load_scene(out, split="all")
    assert [c.name for c in got] == [c.name for c in cams]
    assert got[0].image_path == src / "images" / "img_000.png"
    for g, w in zip(got, cams):  # intrinsics of the 32x24 cameras.json scaled to the 64x48 source images
        assert (g.width, g.height) == (64, 48)
        np.testing.assert_allclose([g.fx, g.fy, g.cx, g.cy], [w.fx, w.fy, w.cx, w.cy], rtol=1e-6)
        torch.testing.assert_close(project64(g, KNOWN_POINTS), project64(w, KNOWN_POINTS), atol=2e-5, rtol=0)
    assert [c.name for c in load_scene(out, split="test")] == ["img_000.png", "img_008.png"]
    # the dense model is the highest iteration's PLY; rendering it from the read cameras gives the images
    assert scene_pretrained_model(out) == out / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    m, info = load_pretrained(out)
    assert info["format"] == "inria" and m.num_gaussians == model.num_gaussians
    back = render_images(m, got[:3])
    assert float((back - imgs[:3]).abs().max()) < 1e-4
    # white_background from cfg_args
    assert open_scene(out).background == (1.0, 1.0, 1.0)
    assert open_scene(src).background == (0.0, 0.0, 0.0)


def test_inria_cameras_json_is_not_taken_for_the_embedded_format(inria, tmp_path):
    out, src, cams, _, _ = inria
    assert read_inria_cameras(out / "cameras.json")[0]["img_name"] == "img_000"
    # the project's own cameras.json next to images stays "embedded"
    emb = tmp_path / "emb"
    (emb / "images").mkdir(parents=True)
    for c in cams:
        (emb / "images" / c.name).write_bytes((src / "images" / c.name).read_bytes())
        c.image_path = emb / "images" / c.name
    write_scene_cameras(emb / "cameras.json", cams)
    assert detect_layout(emb) == "embedded"
    # an INRIA cameras.json without cfg_args is still recognised (and its missing source is named)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "cameras.json").write_bytes((out / "cameras.json").read_bytes())
    assert detect_layout(bare) == "inria"
    with pytest.raises(SceneError, match=r"cfg_args: no source_path"):
        load_scene(bare)
    assert find_scenes(tmp_path) == [bare, emb]


def test_cfg_args_parser_is_safe_and_names_the_file(tmp_path):
    good = tmp_path / "cfg_args"
    good.write_text("Namespace(eval=True, images='images', resolution=-1, sh_degree=3, source_path='/data/x', "
                    "white_background=False, data_device='cuda')")
    assert parse_cfg_args(good) == {"eval": True, "images": "images", "resolution": -1, "sh_degree": 3,
                                    "source_path": "/data/x", "white_background": False, "data_device": "cuda"}
    evil = tmp_path / "evil" / "cfg_args"
    evil.parent.mkdir()
    evil.write_text("Namespace(source_path=__import__('os').system('touch pwned'))")
    with pytest.raises(InriaError, match=r"evil/cfg_args: the value of 'source_path' is not a literal"):
        parse_cfg_args(evil)
    assert not (tmp_path / "pwned").exists()
    evil.write_text("print('hi')")
    with pytest.raises(SceneError, match=r"evil/cfg_args: expected 'Namespace"):
        parse_cfg_args(evil)
    missing = tmp_path / "m"
    (missing / "point_cloud" / "iteration_10").mkdir(parents=True)
    (missing / "cfg_args").write_text("Namespace(source_path='/no/such/folder')")
    (missing / "cameras.json").write_text(json.dumps([{"img_name": "a", "width": 4, "height": 4, "fx": 4.0,
                                                       "fy": 4.0, "position": [0, 0, 0],
                                                       "rotation": np.eye(3).tolist(), "id": 0}]))
    with pytest.raises(SceneError, match=r"m/cfg_args: source_path '/no/such/folder' not found"):
        load_scene(missing)


LEGO = Path(__file__).resolve().parents[2] / "shared" / "scenes" / "nerf_synthetic_lego_200"


@pytest.mark.skipif(not LEGO.is_dir(), reason="shared lego scene not available")
def test_inria_output_of_a_blender_scene_uses_its_split_files(tmp_path):
    from nifi_lib.gs.cameras import read_blender_scene

    test_cams = read_blender_scene(LEGO, "test")
    out = tmp_path / "lego_run"
    write_inria_output(out, test_cams[:3], toy_model(10, sh_degree=0), LEGO, white_background=True)
    assert detect_layout(out) == "inria"
    got = load_scene(out, "test")
    assert [c.image_path for c in got] == [c.image_path for c in test_cams]
    torch.testing.assert_close(got[0].world_to_cam, test_cams[0].world_to_cam)
    assert open_scene(out).background == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- nerfstudio splatfacto exports

def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _normalized_camera(cam: Camera, r: np.ndarray, t: np.ndarray, s: float) -> Camera:
    """The camera as nerfstudio sees it after ``x_n = s (R x + t)`` (camera-to-world transformed the same way)."""
    c2w = np.linalg.inv(cam.world_to_cam.double().numpy())
    c2w_n = np.eye(4)
    c2w_n[:3, :3] = r @ c2w[:3, :3]
    c2w_n[:3, 3] = s * (r @ c2w[:3, 3] + t)
    return Camera(cam.name, cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy,
                  torch.from_numpy(np.linalg.inv(c2w_n)).float())


def test_nerfstudio_export_is_mapped_back_to_the_scene_frame(tmp_path):
    model = toy_model(150, sh_degree=3, seed=7, radius=0.6)
    cams = cameras(3, 40, 30, 35.0)
    r, t, s = _rotation((0.3, -1.0, 0.5), 1.1), np.array([0.4, -0.2, 0.7]), 0.37
    norm = apply_normalization(model, r, t, s)
    # the forward map, computed independently: x_n = s (R x + t), scales times s
    np.testing.assert_allclose(norm.means.double().numpy(), s * (model.means.double().numpy() @ r.T + t), atol=1e-5)
    np.testing.assert_allclose(norm.log_scales.numpy(), model.log_scales.numpy() + math.log(s), atol=1e-5)
    # what splatfacto renders from its normalized cameras is the original view (SH bands rotated with the frame)
    want = render_images(model, cams)
    torch.testing.assert_close(render_images(norm, [_normalized_camera(c, r, t, s) for c in cams]), want,
                               atol=2e-4, rtol=0)
    export = tmp_path / "exports" / "splat"
    save_ply(norm, export / "splat.ply")
    m = np.concatenate([r, t[:, None]], axis=1)
    (export / "dataparser_transforms.json").write_text(json.dumps({"transform": m.tolist(), "scale": s}))
    assert detect_model_format(export) == "nerfstudio"
    assert detect_model_format(export / "splat.ply") == "nerfstudio"
    back, info = load_pretrained(export / "splat.ply")
    assert info["format"] == "nerfstudio" and info["transforms"].endswith("dataparser_transforms.json")
    torch.testing.assert_close(back.means, model.means, atol=2e-5, rtol=0)
    torch.testing.assert_close(back.log_scales, model.log_scales, atol=2e-5, rtol=0)
    qa, qb = back.quats / back.quats.norm(dim=1, keepdim=True), model.quats / model.quats.norm(dim=1, keepdim=True)
    assert float((qa * qb).sum(1).abs().min()) > 1 - 1e-5   # same rotation (q and -q)
    torch.testing.assert_close(back.sh_rest, model.sh_rest, atol=2e-5, rtol=0)
    torch.testing.assert_close(render_images(back, cams), want, atol=2e-4, rtol=0)
    # the folder form and an explicit transforms file give the same model; a plain PLY is left alone
    folder_model, _ = load_pretrained(export)
    torch.testing.assert_close(folder_model.means, back.means)
    plain = tmp_path / "plain.ply"
    save_ply(norm, plain)
    assert detect_model_format(plain) == "ply"
    torch.testing.assert_close(load_pretrained(plain)[0].means, norm.means)
    explicit, _ = load_pretrained(plain, export / "dataparser_transforms.json")
    torch.testing.assert_close(explicit.means, back.means)
    # a reflection cannot be undone on Gaussians
    (export / "dataparser_transforms.json").write_text(json.dumps({"transform": (-m).tolist(), "scale": s}))
    with pytest.raises(PretrainedError, match="dataparser_transforms.json: the rotation part is not a proper"):
        load_pretrained(export)


# --------------------------------------------------------------------------- gsplat checkpoints

def test_gsplat_checkpoint_round_trip_and_sh_layout(tmp_path):
    model = toy_model(80, sh_degree=3, seed=11)
    # written here as gsplat's simple_trainer saves it: {"step", "splats": ParameterDict state}
    splats = {"means": model.means.clone(), "scales": model.log_scales.clone(), "quats": model.quats.clone(),
              "opacities": model.opacity_logits.clone(), "sh0": model.sh_dc[:, None, :].clone(),
              "shN": model.sh_rest.clone()}
    ck = tmp_path / "ckpts" / "ckpt_29999_rank0.pt"
    ck.parent.mkdir()
    torch.save({"step": 29999, "splats": splats}, ck)
    assert detect_model_format(ck) == "gsplat"
    got = read_gsplat_checkpoint(ck)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(getattr(got, name), getattr(model, name)), name
    # gsplat's own PLY export flattens shN channel-major (shN.permute(0, 2, 1)): the INRIA f_rest order
    save_ply(got, tmp_path / "g.ply")
    from plyfile import PlyData

    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    f_rest = np.stack([np.asarray(v[f"f_rest_{i}"]) for i in range(45)], axis=1)
    np.testing.assert_array_equal(f_rest, splats["shN"].permute(0, 2, 1).reshape(80, -1).numpy())
    torch.testing.assert_close(load_ply(tmp_path / "g.ply").sh_rest, model.sh_rest)
    # a bare splats dict, and a normalized-world checkpoint with its 4x4 similarity (x_n = T x)
    torch.save(splats, tmp_path / "bare.pt")
    assert torch.equal(load_pretrained(tmp_path / "bare.pt")[0].means, model.means)
    r, t, s = _rotation((1.0, 0.2, -0.4), -0.7), np.array([0.1, 0.5, -0.3]), 2.5
    norm = apply_normalization(model, r, t, s)
    torch.save({"step": 1, "splats": {"means": norm.means, "scales": norm.log_scales, "quats": norm.quats,
                                      "opacities": norm.opacity_logits, "sh0": norm.sh_dc[:, None, :],
                                      "shN": norm.sh_rest}}, tmp_path / "norm.pt")
    big_t = np.eye(4)
    big_t[:3, :3], big_t[:3, 3] = s * r, s * t
    np.save(tmp_path / "transform.npy", big_t)
    back, _ = load_pretrained(tmp_path / "norm.pt", tmp_path / "transform.npy")
    torch.testing.assert_close(back.means, model.means, atol=2e-5, rtol=0)
    torch.testing.assert_close(back.sh_rest, model.sh_rest, atol=2e-5, rtol=0)
    # not a gsplat checkpoint: the file and what it holds are named
    torch.save({"step": 3, "model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(PretrainedError, match=r"other.pt: not a gsplat checkpoint"):
        load_pretrained(tmp_path / "other.pt")
    with pytest.raises(PretrainedError, match=r"nope: unknown model folder"):
        (tmp_path / "nope").mkdir()
        load_pretrained(tmp_path / "nope")
