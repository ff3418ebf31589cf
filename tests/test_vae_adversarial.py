"""The adversarial patch term of the embedded prior's VAE (nifi_lib.diffusion.vae_adversarial) and its use in
prior.train_vae: the losses against hand computations, the adaptive weight against analytic gradients, and a
decoder-only run that leaves the encoder and the latent scale exactly as they were."""
import pytest
import torch

from nifi_lib.diffusion.prior import PriorConfig, build_prior_backbone, train_vae
from nifi_lib.diffusion.vae_adversarial import (PatchDiscriminator, adaptive_adversarial_weight,
                                                generator_adversarial_loss, hinge_discriminator_loss)


def test_hinge_and_generator_losses_match_hand_computation():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = 0, 0.5, 2 -> mean 2.5/3; relu(1 + fake) = 0, 1, 2.5 -> mean 3.5/3
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    assert generator_adversarial_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_layer():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    a = torch.tensor([3.0, 0.0, 4.0])     # grad of (w . a) is a, norm 5
    b = torch.tensor([0.0, 1.0, 0.0])     # grad of (w . b) is b, norm 1
    lam = adaptive_adversarial_weight((w * a).sum(), (w * b).sum(), w)
    assert lam.item() == pytest.approx(5.0 / (1.0 + 1e-4))
    assert not lam.requires_grad
    capped = adaptive_adversarial_weight((w * a).sum(), (w * b * 1e-9).sum(), w, max_weight=100.0)
    assert capped.item() == 100.0


def test_patch_discriminator_gives_one_logit_per_patch():
    d = PatchDiscriminator(channels=8, layers=3, norm_groups=4)
    out = d(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)          # 64 -> 32 -> 16 -> 8 (stride 2), 7 (stride 1), 6 (the logit conv)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="layers"):
        PatchDiscriminator(layers=0)


def _tiny_cfg(**kw) -> PriorConfig:
    return PriorConfig(resolution=32, vae_steps=4, vae_batch=2, vae_lr=1e-3, vae_lpips_weight=0.0,
                       transformer_steps=1, **kw)


def test_decoder_only_adversarial_training_keeps_encoder_and_scale():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32)
    bb = build_prior_backbone(_tiny_cfg())
    sf = bb.vae.config.scaling_factor
    enc = {k: v.clone() for k, v in bb.vae.encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in bb.vae.decoder.state_dict().items()}
    hist = train_vae(bb, images, _tiny_cfg(vae_gan_weight=0.5, vae_disc_channels=8, vae_disc_layers=2,
                                           vae_train_encoder=False), progress=False)
    assert all(torch.equal(v, bb.vae.encoder.state_dict()[k]) for k, v in enc.items())
    assert any(not torch.equal(v, bb.vae.decoder.state_dict()[k]) for k, v in dec.items())
    assert bb.vae.config.scaling_factor == sf
    last = hist[-1]
    assert {"adv", "adv_weight", "d_loss"} <= set(last)
    assert last["adv_weight"] > 0 and 0.0 <= last["d_loss"] < 10 and torch.isfinite(torch.tensor(last["adv"]))


def test_adversarial_term_changes_the_decoder_and_starts_when_told():
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    runs = {}
    for name, kw in {"plain": {}, "gan": {"vae_gan_weight": 1.0}, "late": {"vae_gan_weight": 1.0, "vae_gan_start": 100}}.items():
        bb = build_prior_backbone(_tiny_cfg())
        hist = train_vae(bb, images, _tiny_cfg(vae_disc_channels=8, vae_disc_layers=2, **kw), progress=False)
        runs[name] = (bb.vae.decoder.conv_out.weight.detach().clone(), hist)
    assert not torch.equal(runs["plain"][0], runs["gan"][0])
    # a start after the last step: no adversarial term at all, the plain run bit for bit
    assert torch.equal(runs["plain"][0], runs["late"][0])
    assert "adv" not in runs["late"][1][-1] and "adv" in runs["gan"][1][-1]


def test_finetune_decoder_keeps_everything_but_the_decoder(tmp_path, capsys):
    from PIL import Image
    import numpy as np

    from nifi_lib.cli import main
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.diffusion.prior import PriorError, finetune_decoder, load_prior_log

    src = tmp_path / "prior"
    bb = build_prior_backbone(_tiny_cfg())
    bb.save_pretrained(src, info={"note": "source"})
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(imgs / f"{i:03d}.png")
    out = tmp_path / "sharp"
    cfg = _tiny_cfg(vae_gan_weight=0.5, vae_disc_channels=8, vae_disc_layers=2)
    finetune_decoder(src, [imgs], out, cfg, progress=False, device="cpu", heldout_sources=[imgs])
    a, b = load_backbone(str(src)), load_backbone(str(out))
    for name in ("encoder", "quant_conv"):
        sa, sb = getattr(a.vae, name).state_dict(), getattr(b.vae, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, tb = a.transformer.state_dict(), b.transformer.state_dict()
    assert all(torch.equal(ta[k].half().float(), tb[k]) for k in ta)   # stored fp16 (the config's storage dtype)
    assert any(not torch.equal(v, b.vae.decoder.state_dict()[k]) for k, v in a.vae.decoder.state_dict().items())
    assert a.scaling_factor == b.scaling_factor
    assert torch.equal(a.prompt.prompt_embeds, b.prompt.prompt_embeds)
    log = load_prior_log(out)
    run = log["info"]["decoder_finetune"]
    assert run["steps_done"] == 4 and run["source"] == str(src) and run["config"]["vae_train_encoder"] is False
    assert {"heldout_vae_psnr_before", "heldout_vae_psnr"} <= set(run) and len(log["decoder_finetune"]) >= 1
    with pytest.raises(PriorError, match="new folder"):
        finetune_decoder(src, [imgs], src, cfg, progress=False, device="cpu")
    # the CLI: a scene-less glob is a clear error naming the pattern
    rc = main(["prior", "finetune-decoder", "--prior", str(src), "--scenes", str(tmp_path / "none*"),
               "--out", str(tmp_path / "x")])
    assert rc != 0 and "no scenes match" in capsys.readouterr().err and not (tmp_path / "x").exists()
