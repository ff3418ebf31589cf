"""Generated scene presets: the cylinder against hand computations, determinism and the preset layout."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nifi_lib.gs.scene_presets import PRESETS, build_preset, generated_scene
from nifi_lib.gs.scenes import Cylinder


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def test_cylinder_side_and_cap_hits():
    cyl = Cylinder((0.0, 0.0), 0.0, 2.0, 1.0, torch.ones(3, 2, 2))
    o = torch.tensor([[5.0, 0.0, 1.0], [0.0, 0.0, 5.0], [5.0, 0.0, 3.0], [5.0, 0.3, 1.0]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    t, n, uv = cyl.intersect(o, d)
    assert t[0].item() == pytest.approx(4.0)                       # side at x = 1
    torch.testing.assert_close(n[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert uv[0, 1].item() == pytest.approx(0.5)                   # half-way up
    assert t[1].item() == pytest.approx(3.0)                       # top cap at z = 2
    assert n[1, 2].item() == 1.0
    assert math.isinf(t[2].item())                                 # passes above
    assert t[3].item() == pytest.approx(5.0 - math.sqrt(1 - 0.09))


def test_generated_scenes_are_deterministic_and_varied():
    a, b = generated_scene("w", 3, 32), generated_scene("w", 3, 32)
    assert a.description == b.description and len(a.primitives) == len(b.primitives)
    assert all(torch.equal(p.tex, q.tex) for p, q in zip(a.primitives, b.primitives))
    kinds = {type(p).__name__ for s in range(6) for p in generated_scene("w", s, 32).primitives}
    assert kinds == {"Quad", "Sphere", "Cylinder"}
    assert len({generated_scene("w", s, 32).description for s in range(6)}) == 6
    assert len(PRESETS["v3"].train) == 6 and PRESETS["v3"].heldout == ["world_heldout"] and PRESETS["v3"].size == 128
    assert PRESETS["v3"].prior_worlds == 30


def test_tiny_preset_layout_determinism_and_resume(tmp_path):
    m1 = build_preset("tiny", tmp_path / "a", progress=False)
    m2 = build_preset("tiny", tmp_path / "b", progress=False)
    assert m1["built_now"] == ["world_0", "world_1", "world_heldout", "prior_0"]
    assert m1["prior_only_scenes"] == ["prior_0"]
    prior = tmp_path / "a" / "prior_only" / "prior_0"           # ground truth only: frames and cameras, no fit
    assert len(list((prior / "images").glob("*.png"))) == 9 and (prior / "cameras.json").is_file()
    assert not (prior / "point_cloud.ply").exists()
    pinfo = json.loads((prior / "scene.json").read_text())
    assert pinfo["iterations"] == 0 and "num_gaussians" not in pinfo and pinfo["seed"] == 3
    assert all(p.read_bytes() == (tmp_path / "b" / "prior_only" / "prior_0" / "images" / p.name).read_bytes()
               for p in (prior / "images").glob("*.png"))
    for grp, name in [("train", "world_0"), ("train", "world_1"), ("heldout", "world_heldout")]:
        a, b = tmp_path / "a" / grp / name, tmp_path / "b" / grp / name
        for f in ("cameras.json", "scene.json", "point_cloud.ply"):
            assert (a / f).is_file()
        imgs = sorted((a / "images").glob("*.png"))
        assert len(imgs) == 9
        assert all(p.read_bytes() == (b / "images" / p.name).read_bytes() for p in imgs)
        assert (a / "point_cloud.ply").read_bytes() == (b / "point_cloud.ply").read_bytes()
        info = json.loads((a / "scene.json").read_text())
        assert info["image_size"] == [32, 32] and info["test_views"] == [0, 8] and len(info["train_views"]) == 7
    assert json.loads((tmp_path / "a" / "preset.json").read_text())["heldout_scenes"] == ["world_heldout"]
    assert build_preset("tiny", tmp_path / "a", progress=False)["built_now"] == []     # resumed: nothing rebuilt
    assert build_preset("tiny", tmp_path / "a", progress=False, iterations=41)["built_now"] != []  # new settings


def test_paired_prior_worlds_are_fitted_with_the_same_frames(tmp_path):
    from nifi_lib.gs.scene_presets import PRIOR_ONLY, fitted, get_preset, paired_prior_names

    p = get_preset("v3", paired_prior_worlds=12)
    assert paired_prior_names(p) == [f"prior_{k}" for k in range(12)]
    assert fitted(p, "prior_11", PRIOR_ONLY) and not fitted(p, "prior_12", PRIOR_ONLY)
    assert fitted(p, "world_0", "train") and not fitted(get_preset("v3"), "prior_0", PRIOR_ONLY)
    with pytest.raises(ValueError, match="paired_prior_worlds=31 must be between 0 and prior_worlds=30"):
        get_preset("v3", paired_prior_worlds=31)
    # the frames-only build, then the full build with the prior-only world paired: its frames are kept,
    # the fit is added, and the held-out world keeps its seed (6 of v3 / 2 of tiny: the order is unchanged)
    build_preset("tiny", tmp_path, progress=False, frames_only=True)
    frames = {q: q.read_bytes() for q in sorted((tmp_path / PRIOR_ONLY / "prior_0" / "images").glob("*.png"))}
    m = build_preset("tiny", tmp_path, progress=False, paired_prior_worlds=1)
    assert m["paired_prior_scenes"] == ["prior_0"] and "prior_0" in m["built_now"]
    assert (tmp_path / PRIOR_ONLY / "prior_0" / "point_cloud.ply").is_file()
    assert {q: q.read_bytes() for q in frames} == frames
    assert m["scenes"]["world_heldout"]["seed"] == 2 and m["scenes"]["prior_0"]["seed"] == 3


def test_prior_views_render_fewer_views_of_the_unpaired_prior_worlds(tmp_path):
    from nifi_lib.gs.scene_presets import PRIOR_ONLY

    m = build_preset("tiny", tmp_path, progress=False, frames_only=True, prior_worlds=2, paired_prior_worlds=1,
                     prior_views=3)
    views = {n: len(list((tmp_path / g / n / "images").glob("*.png")))
             for n, g in [("world_0", "train"), ("prior_0", PRIOR_ONLY), ("prior_1", PRIOR_ONLY)]}
    assert views == {"world_0": 9, "prior_0": 9, "prior_1": 3}   # the paired world keeps the preset's views
    assert m["scenes"]["prior_1"]["views"] == 3
    again = build_preset("tiny", tmp_path, progress=False, frames_only=True, prior_worlds=2, paired_prior_worlds=1,
                         prior_views=3)
    assert again["built_now"] == []                                # resumes with its own view count
    with pytest.raises(ValueError, match="prior_views=0"):
        build_preset("tiny", tmp_path, progress=False, prior_views=0)


def test_a_preset_object_builds_without_registering(tmp_path):
    """``build_preset`` takes a :class:`Preset` itself (a measurement's own worlds, scripts/vae_generalisation.py):
    its worlds are built frames-only, the registry is unchanged, and the frames equal the named preset's world of
    the same seed (the same generator, the same settings)."""
    from nifi_lib.gs.scene_presets import Preset, get_preset

    before = dict(PRESETS)
    tiny = get_preset("tiny")
    own = Preset("adhoc", [], ["world_0"], size=tiny.size, n_views=3, iterations=tiny.iterations,
                 max_gaussians=tiny.max_gaussians, init_points=tiny.init_points, texture_size=tiny.texture_size)
    assert get_preset(own, n_views=2).n_views == 2 and own.n_views == 3        # overrides copy, never mutate
    m = build_preset(own, tmp_path / "own", progress=False, frames_only=True)
    assert PRESETS == before and m["preset"] == "adhoc" and m["built_now"] == ["world_0"]
    imgs = sorted((tmp_path / "own" / "heldout" / "world_0" / "images").glob("*.png"))
    assert len(imgs) == 3 and not (tmp_path / "own" / "heldout" / "world_0" / "point_cloud.ply").exists()
    # the named preset's first world has the same name and seed (1000 * 0 + 0): the same ground truth
    ref = build_preset(get_preset("tiny", n_views=3, prior_worlds=0), tmp_path / "ref", progress=False,
                       frames_only=True)
    assert ref["built_now"][0] == "world_0"
    assert [p.read_bytes() for p in imgs] == [(tmp_path / "ref" / "train" / "world_0" / "images" / p.name).read_bytes()
                                              for p in imgs]
