"""Fixtures shared by the test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a shared 2-core machine, OpenMP spinning across processes costs
    10-30x. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small procedural 3DGS scene folder (300 Gaussians, 9 views of 24 px) written by the project's code."""
    from nifi_lib.synthesis.toy import make_toy_scene

    root = tmp_path_factory.mktemp("data") / "toy"
    make_toy_scene(root, n=300, num_views=9, size=24)
    return root


def _require_weights(*builders) -> None:
    from nifi_lib.metrics.weights import WeightsError

    try:
        for build in builders:
            build()
    except WeightsError as e:
        pytest.skip(f"no real perceptual-metric weights here and none can be fetched or converted: {e}")


@pytest.fixture(scope="module")
def real_lpips():
    """Real LPIPS-alex weights (hub cache, official URL or offline conversion), else skip."""
    from nifi_lib.metrics import metrics as M

    _require_weights(lambda: M.build_lpips("alex"))


@pytest.fixture(scope="module")
def real_weights():
    """Real LPIPS-alex and DISTS weights, else skip."""
    from nifi_lib.metrics import metrics as M

    _require_weights(lambda: M.build_lpips("alex"), M.build_dists)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder with the tiny backbone and a tiny restorer checkpoint (``helpers.save_tiny_restorer``): the
    ``--base_model`` and ``--ckpt`` of the CLI tests that restore frames."""
    from helpers import save_tiny_restorer

    root = tmp_path_factory.mktemp("bb")
    save_tiny_restorer(root)
    return root
