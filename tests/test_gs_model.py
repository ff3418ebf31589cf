"""GaussianModel and the INRIA 3DGS PLY layout: bit-exact round trip, channel-major f_rest, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from nifi_lib.errors import NifiError
from nifi_lib.gs.model import GaussianError, GaussianModel, concat, load_ply, ply_property_names, save_ply


def random_model(n: int = 50, degree: int = 3, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return GaussianModel(
        means=torch.randn(n, 3, generator=g), log_scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g), opacity_logits=torch.randn(n, generator=g),
        sh_dc=torch.randn(n, 3, generator=g), sh_rest=torch.randn(n, k, 3, generator=g))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_is_bit_exact(tmp_path, degree):
    m = random_model(degree=degree)
    path = tmp_path / "scene.ply"
    save_ply(m, path)
    back = load_ply(path)
    assert back.sh_degree == degree and back.num_gaussians == 50
    for name, t in m.tensors().items():
        u = back.tensors()[name]
        assert u.dtype == torch.float32 and u.shape == t.shape
        assert torch.equal(u.view(torch.int32), t.view(torch.int32)), name  # bitwise
    assert not list(tmp_path.glob(".*")), "atomic write left a temporary file"


def test_ply_layout_matches_inria_3dgs(tmp_path):
    """Properties in INRIA order; f_rest channel-major: f_rest_{c*K + j} = sh_rest[:, j, c]."""
    m = random_model(n=7, degree=2)
    path = tmp_path / "scene.ply"
    save_ply(m, path)
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    names = list(v.dtype.names)
    k = 8
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(3 * k)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                               "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == ply_property_names(2)
    assert all(v.dtype[n] == np.dtype("<f4") for n in names)
    for c in range(3):
        for j in range(k):
            np.testing.assert_array_equal(v[f"f_rest_{c * k + j}"], m.sh_rest[:, j, c].numpy())
    np.testing.assert_array_equal(v["rot_0"], m.quats[:, 0].numpy())  # w first
    np.testing.assert_array_equal(v["opacity"], m.opacity_logits.numpy())  # stored as logits
    np.testing.assert_array_equal(v["scale_2"], m.log_scales[:, 2].numpy())  # stored as log-scales


def _write_vertices(path, columns: dict[str, np.ndarray]):
    n = len(next(iter(columns.values())))
    arr = np.empty(n, dtype=[(k, "<f4") for k in columns])
    for k, c in columns.items():
        arr[k] = c
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def _base_columns(n=4):
    cols = {k: np.zeros(n, np.float32) for k in ply_property_names(0)}
    cols["rot_0"][:] = 1
    return cols


def test_load_ply_from_another_writer(tmp_path):
    """A file written independently (text PLY, degree 0, extra properties) loads."""
    cols = _base_columns()
    cols["x"][:] = [1, 2, 3, 4]
    cols["extra"] = np.ones(4, np.float32)
    path = tmp_path / "other.ply"
    arr = np.empty(4, dtype=[(k, "<f4") for k in cols])
    for k, c in cols.items():
        arr[k] = c
    PlyData([PlyElement.describe(arr, "vertex")], text=True).write(str(path))
    m = load_ply(path)
    assert m.sh_degree == 0 and m.sh_rest.shape == (4, 0, 3)
    assert m.means[:, 0].tolist() == [1, 2, 3, 4]


def test_load_ply_errors_name_the_file(tmp_path):
    cols = _base_columns()
    del cols["scale_1"]
    bad = tmp_path / "missing.ply"
    _write_vertices(bad, cols)
    with pytest.raises(GaussianError, match=r"missing\.ply.*scale_1"):
        load_ply(bad)

    cols = _base_columns()
    cols["opacity"][2] = np.nan
    nan = tmp_path / "nan.ply"
    _write_vertices(nan, cols)
    with pytest.raises(GaussianError, match=r"nan\.ply.*NaN"):
        load_ply(nan)

    cols = _base_columns()
    cols["x"][0] = np.inf
    inf = tmp_path / "inf.ply"
    _write_vertices(inf, cols)
    with pytest.raises(GaussianError, match=r"inf\.ply.*means"):
        load_ply(inf)

    empty = tmp_path / "empty.ply"
    _write_vertices(empty, {k: np.zeros(0, np.float32) for k in ply_property_names(0)})
    with pytest.raises(GaussianError, match=r"empty\.ply.*zero vertices"):
        load_ply(empty)

    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"this is not a ply file\n" * 10)
    with pytest.raises(GaussianError, match=r"junk\.ply.*cannot read"):
        load_ply(junk)

    with pytest.raises(GaussianError, match=r"absent\.ply.*not found"):
        load_ply(tmp_path / "absent.ply")

    cols = _base_columns()
    for i in range(5):  # 5 f_rest values match no SH degree
        cols[f"f_rest_{i}"] = np.zeros(4, np.float32)
    odd = tmp_path / "odd.ply"
    _write_vertices(odd, cols)
    with pytest.raises(GaussianError, match=r"odd\.ply.*f_rest"):
        load_ply(odd)
    assert issubclass(GaussianError, NifiError)


def test_validate_and_tensor_helpers():
    m = random_model(n=10, degree=1)
    assert m.num_gaussians == 10 and m.sh_degree == 1 and len(m) == 10
    sub = m.subset(torch.arange(10) % 2 == 0)
    assert sub.num_gaussians == 5 and torch.equal(sub.means, m.means[::2])
    assert torch.equal(m.subset([1, 3]).sh_rest, m.sh_rest[[1, 3]])
    assert torch.equal(m.subset(np.array([0, 9])).quats, m.quats[[0, 9]])
    c = m.clone()
    c.means[0, 0] = 123.0
    assert m.means[0, 0] != 123.0
    m2 = GaussianModel.from_tensors(m.tensors())
    assert all(torch.equal(a, b) for a, b in zip(m2.tensors().values(), m.tensors().values()))
    assert list(m.tensors()) == ["means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"]
    m.requires_grad_(True)
    assert all(t.requires_grad for t in m.tensors().values())
    assert not any(t.requires_grad for t in m.detach().tensors().values())
    assert concat([m.detach(), m.detach()]).num_gaussians == 20
    m.to("cpu").validate("x")

    bad = m.detach().clone()
    bad.sh_dc[3, 1] = float("nan")
    with pytest.raises(GaussianError, match="my_source.*sh_dc"):
        bad.validate("my_source")
    bad = m.detach().clone()
    bad.quats = bad.quats[:5]
    with pytest.raises(GaussianError, match="src.*quats"):
        bad.validate("src")
    with pytest.raises(GaussianError, match="zero Gaussians"):
        m.detach().subset(torch.zeros(10, dtype=torch.bool)).validate("empty")
    bad = m.detach().clone()
    bad.sh_rest = torch.zeros(10, 2, 3)
    with pytest.raises(GaussianError, match="sh_rest"):
        bad.validate("deg")
