"""Sec. 3 GoDe importance, top-k pruning and fine-tuning, on scenes whose answer is known."""
from __future__ import annotations

import pytest
import torch

from nifi_lib.errors import NifiError
from nifi_lib.gs.model import GaussianModel, concat
from nifi_lib.gs.render import render
from nifi_lib.synthesis.finetune import finetune, finetune_loss
from nifi_lib.synthesis.importance import PruningError, gode_importance, prune_top_k, top_k_indices
from nifi_lib.synthesis.toy import ring_cameras, toy_model



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene():
    visible = toy_model(60, sh_degree=1, seed=3)
    far = toy_model(5, sh_degree=1, seed=4)
    far.means = far.means * 0.1 + torch.tensor([0.0, 0.0, 40.0])  # straight above the ring: in no frustum
    clear = toy_model(5, sh_degree=1, seed=5)
    clear.opacity_logits = torch.full((5,), -12.0)  # sigmoid = 6e-6 < 1/255 everywhere
    model = concat([visible, far, clear])
    cams = ring_cameras(6, size=24)
    target = toy_model(60, sh_degree=1, seed=6)  # ground truth differs, so the loss has gradients
    with torch.no_grad():
        images = torch.stack([render(target, c).image.clamp(0, 1) for c in cams])
    return model, cams, images


def independent_importance(model: GaussianModel, cams, images) -> torch.Tensor:
    """Same definition computed differently: one (N, D) leaf holding every attribute of each primitive."""
    n, k = model.num_gaussians, model.sh_rest.shape[1]
    flat = torch.cat([model.means, model.log_scales, model.quats, model.opacity_logits[:, None], model.sh_dc,
                      model.sh_rest.reshape(n, -1)], dim=1).detach().double().requires_grad_(True)
    total = torch.zeros(n, dtype=torch.float64)
    for cam, img in zip(cams, images):
        f = flat.float()
        m = GaussianModel(f[:, 0:3], f[:, 3:6], f[:, 6:10], f[:, 10], f[:, 11:14], f[:, 14:].reshape(n, k, 3))
        loss = (render(m, cam).image - img).abs().mean()
        (g,) = torch.autograd.grad(loss, flat)
        total += g.norm(dim=1)
    return total


def test_importance_matches_definition_and_ranks_invisible_lowest(scene):
    model, cams, images = scene
    imp = gode_importance(model, cams, images, progress=False)
    assert imp.shape == (70,) and imp.dtype == torch.float64
    ref = independent_importance(model, cams, images)
    torch.testing.assert_close(imp, ref, rtol=1e-4, atol=1e-9)
    assert torch.equal(imp[60:], torch.zeros(10))  # outside every frustum, or transparent: exactly zero
    assert (imp[:60] > 0).sum() >= 50
    # summed over views: the score of two copies of the view set is twice the score
    imp2 = gode_importance(model, cams + cams, torch.cat([images, images]), progress=False)
    torch.testing.assert_close(imp2, 2 * imp)


def test_prune_keeps_exactly_the_top_k(scene):
    model, cams, images = scene
    imp = gode_importance(model, cams, images, progress=False)
    for k in (1, 10, 37, 60):
        pruned, kept = prune_top_k(model, imp, k)
        order = sorted(range(70), key=lambda i: (-float(imp[i]), i))
        assert kept.tolist() == sorted(order[:k])
        assert pruned.num_gaussians == k
        assert torch.equal(pruned.means, model.means[kept])
        assert torch.equal(pruned.sh_rest, model.sh_rest[kept])
        assert not set(kept.tolist()) & set(range(60, 70)) or k > int((imp > 0).sum())


def test_top_k_ties_and_errors():
    imp = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0])
    assert top_k_indices(imp, 2).tolist() == [1, 2]  # ties: lower index first
    assert top_k_indices(imp, 5).tolist() == [0, 1, 2, 3, 4]
    for bad in (0, 6):
        with pytest.raises(PruningError):
            top_k_indices(imp, bad)
    with pytest.raises(PruningError):
        top_k_indices(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(NifiError):
        prune_top_k(toy_model(5), torch.ones(4), 2)


def test_importance_rejects_mismatched_inputs(scene):
    model, cams, images = scene
    with pytest.raises(PruningError):
        gode_importance(model, cams, images[:2], progress=False)
    with pytest.raises(PruningError):
        gode_importance(model, [], images[:0], progress=False)


def test_finetune_lowers_the_loss_and_keeps_the_input(scene):
    _, cams, _ = scene
    target = toy_model(80, sh_degree=1, seed=7)
    with torch.no_grad():
        images = torch.stack([render(target, c).image.clamp(0, 1) for c in cams])
    start, kept = prune_top_k(target, torch.arange(80, dtype=torch.float64), 30)
    start.sh_dc += 0.3  # perturb the colours

    def loss_of(m):
        with torch.no_grad():
            return sum(float(finetune_loss(render(m, c).image, i)) for c, i in zip(cams, images)) / len(cams)

    before = start.clone()
    tuned, hist = finetune(start, cams, images, 40, seed=0, progress=False)
    assert len(hist["loss"]) == 40 and tuned.num_gaussians == 30
    assert loss_of(tuned) < 0.9 * loss_of(start)
    assert torch.equal(start.sh_dc, before.sh_dc)  # not modified in place
    same, h0 = finetune(start, cams, images, 0, progress=False)
    assert torch.equal(same.means, start.means) and h0["loss"] == []
