"""NiFi w/o t0 (Sec. 4.2, Table 1's ablation) is one setting, ``diffusion.t0: 1000`` (t0 = T): trained with it,
stored in the checkpoint, read back by the restorer and the evaluation, and the trainer's Eq. 7 equals the
restorer's for t0 = 199 and t0 = T. A t0 = 199 checkpoint is never silently evaluated as the ablation."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import randomize_lora, tiny_backbone
from trainer_helpers import make_backbone_dir, make_pairs, tiny_config
from nifi_lib.config import ConfigError, config_from_dict
from nifi_lib.restoration.lora import RESTORER


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("wo_t0")
    return make_backbone_dir(root / "bb"), make_pairs(root / "pairs")


@pytest.fixture(scope="module")
def wo_t0_run(setup, tmp_path_factory):
    """A 2-step training run with diffusion.t0 = 1000 on the tiny backbone."""
    from nifi_lib.training.trainer import train

    bb_dir, pairs = setup
    cfg = tiny_config(bb_dir, max_steps=2, save_every=2, val_every=2, val_max_images=1)
    cfg.diffusion.t0 = 1000
    exp = tmp_path_factory.mktemp("exp_wo_t0")
    train(cfg, pairs, exp, progress=False, device="cpu")
    return exp / "latest.pt"


@pytest.fixture(scope="module")
def t199_ckpt(setup, tmp_path_factory):
    """A training checkpoint of the t0 = 199 setting (no steps needed: only what it records matters)."""
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.training.trainer import NiFiTrainer

    bb_dir, _ = setup
    tr = NiFiTrainer(tiny_config(bb_dir), load_backbone(str(bb_dir)), perceptual=None)
    path = tmp_path_factory.mktemp("exp_199") / "latest.pt"
    tr.save(path)
    return path


@pytest.fixture(scope="module")
def authors_ckpt(setup, tmp_path_factory):
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.restoration.checkpoint import save_authors_checkpoint
    from nifi_lib.restoration.lora import add_restorer_adapters

    bb = load_backbone(str(setup[0]))
    add_restorer_adapters(bb, rank=2, alpha=2)
    path = tmp_path_factory.mktemp("authors") / "restorer.ckpt"
    save_authors_checkpoint(path, bb)
    return path


def test_config_t0_T_is_the_ablation_and_add_noise_is_gone():
    assert config_from_dict({"diffusion": {"t0": 1000}}).diffusion.t0 == 1000
    with pytest.raises(ConfigError, match=r"diffusion.t0 must lie in \[0, 1000\]"):
        config_from_dict({"diffusion": {"t0": 1001}}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"add_noise was removed.*diffusion.t0: 1000"):
        config_from_dict({"diffusion": {"add_noise": False}}, source="x.yaml")
    assert "add_noise" not in config_from_dict({}).to_dict()["diffusion"]


def test_training_with_t0_T_records_it_and_the_restorer_reads_it_back(setup, wo_t0_run, t199_ckpt, authors_ckpt):
    from nifi_lib.restoration.io import read_checkpoint_t0, safe_torch_load
    from nifi_lib.restoration.restorer import Restorer

    bb_dir, _ = setup
    ck = safe_torch_load(wo_t0_run)
    assert ck["t0"] == 1000 and ck["config"]["diffusion"]["t0"] == 1000
    assert read_checkpoint_t0(wo_t0_run) == 1000
    r = Restorer.from_pretrained(str(bb_dir), ckpt=str(wo_t0_run))
    assert r.t0 == 1000 and r.checkpoint_t0 == 1000
    sched = r.schedule()
    assert not sched.add_noise and sched.sigma_t0 == 1.0 and sched.t0 == 1000.0
    out = r.restore(torch.rand(1, 3, 16, 16) * 2 - 1, seed=0)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()
    # t0 = 199 training checkpoint, the authors' .ckpt (records none: 199), and an explicit t0 wins
    assert safe_torch_load(t199_ckpt)["t0"] == 199
    assert Restorer.from_pretrained(str(bb_dir), ckpt=str(t199_ckpt)).t0 == 199
    ra = Restorer.from_pretrained(str(bb_dir), ckpt=str(authors_ckpt))
    assert ra.t0 == 199 and ra.checkpoint_t0 is None and read_checkpoint_t0(authors_ckpt) is None
    assert Restorer.from_pretrained(str(bb_dir), ckpt=str(wo_t0_run), t0=199).t0 == 199
    with pytest.raises(ValueError, match="add_noise=False is no longer supported"):
        ra.restore(torch.zeros(1, 3, 16, 16), add_noise=False)


@pytest.mark.parametrize("t0", [199, 1000])
def test_trainer_restore_latents_equals_restorer(setup, monkeypatch, t0):
    """Same generator convention (latent sample first, then the noise) -> the same x^ and image, and the
    transformer sees timestep t0 (1000 at t0 = T)."""
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.diffusion.latents import decode_latents, to_model_range
    from nifi_lib.restoration.restorer import Restorer
    from nifi_lib.training import trainer as T

    bb_dir, _ = setup
    cfg = tiny_config(bb_dir)
    cfg.diffusion.t0 = t0
    tr = T.NiFiTrainer(cfg, load_backbone(str(bb_dir)), perceptual=None)
    randomize_lora(tr.bb.transformer, RESTORER, seed=3)
    randomize_lora(tr.bb.vae, RESTORER, seed=4)
    deg01 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    import nifi_lib.restoration.restorer as R   # the one Eq. 7 path the trainer calls

    seen = []
    real = R.transformer_velocity

    def spy(transformer, x_t, timestep, *a, **k):
        seen.append(float(timestep))
        return real(transformer, x_t, timestep, *a, **k)

    monkeypatch.setattr(R, "transformer_velocity", spy)
    tr.noise_generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x_hat = tr.restore_latents(deg01, torch.zeros(2, dtype=torch.bool))
        img_train = decode_latents(tr.bb.vae, x_hat, tr.bb.scaling_factor).clamp(-1, 1)
    assert seen == [float(t0)]
    out = Restorer(tr.bb, t0=t0, adapter=RESTORER).restore(to_model_range(deg01),
                                                          generator=torch.Generator().manual_seed(7))
    assert (out - img_train).abs().max().item() < 1e-5
    # with the encoder's mode (no latent sample), the seed matters exactly where Eq. 2 adds noise: at t0 < T;
    # at t0 = T the latent is fed un-noised, so the output is deterministic
    monkeypatch.setattr(R, "transformer_velocity", real)
    real_encode = R.encode_latents
    monkeypatch.setattr(R, "encode_latents", lambda vae, x, sf, generator=None, sample=True:
                        real_encode(vae, x, sf, generator=generator, sample=False))
    r = Restorer(tr.bb, t0=t0, adapter=RESTORER)
    a, b = (r.restore(to_model_range(deg01), seed=sd) for sd in (8, 9))
    if t0 == 1000:
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().max().item() > 1e-4


def test_nifi_wo_t0_needs_its_own_checkpoint(setup, wo_t0_run, t199_ckpt, authors_ckpt):
    from nifi_lib.evaluation import baselines as B

    opts = dict(base_model=str(setup[0]), device="cpu", seed=0)
    for bad in (t199_ckpt, authors_ckpt):
        with pytest.raises(B.MethodError, match="NiFi w/o t0 needs a checkpoint trained with diffusion.t0: 1000"):
            B.create_method("nifi_wo_t0", ckpt=str(bad), **opts)
        with pytest.raises(B.MethodError, match="NiFi w/o t0 needs a checkpoint trained with diffusion.t0: 1000"):
            B.create_method("nifi_wo_t0", ckpt_wo_t0=str(bad), ckpt=str(wo_t0_run), **opts)
    with pytest.raises(B.MethodError, match="ckpt_wo_t0"):
        B.create_method("nifi_wo_t0", **opts)
    for kw in ({"ckpt_wo_t0": str(wo_t0_run), "ckpt": str(t199_ckpt)}, {"ckpt": str(wo_t0_run)}):
        m = B.create_method("nifi_wo_t0", t0=199, **kw, **opts)     # a stray --t0 does not change the ablation
        info = m.info()
        assert info["trained_t0"] == 1000 and info["t0"] == 1000 and info["ckpt"] == str(wo_t0_run)
        assert info["add_noise"] is False and info["sigma_t0"] == 1.0
        assert m(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_t0_sweep_uses_the_trained_wo_t0_checkpoint(setup, wo_t0_run, t199_ckpt):
    from nifi_lib.metrics import metrics as M
    from nifi_lib.experiments.ablations import t0_sweep
    from nifi_lib.metrics.weights import WeightsError

    try:
        M.build_lpips("alex")
        M.build_dists()
    except WeightsError as e:
        pytest.skip(f"no LPIPS/DISTS weights: {e}")
    bb_dir, pairs = setup
    with pytest.warns(RuntimeWarning, match="t0 = T row is omitted"):
        res = t0_sweep(pairs, str(t199_ckpt), str(bb_dir), [199], limit=1)
    assert set(res) == {"t0=199"}
    res = t0_sweep(pairs, str(t199_ckpt), str(bb_dir), [199], limit=1, ckpt_wo_t0=str(wo_t0_run))
    assert set(res) == {"t0=199", "t0=T (no noise)"} and res["t0=T (no noise)"]["n_images"] == 1
    with pytest.raises(ValueError, match="ckpt_wo_t0"):
        t0_sweep(pairs, str(t199_ckpt), str(bb_dir), [199, 1000], limit=1)


def test_nifi_method_reads_t0_from_its_checkpoint(setup, tmp_path):
    """``nifi eval``/``benchmark`` without --t0 restore at the t0 the checkpoint was trained for."""
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.evaluation import baselines as B
    from nifi_lib.training.trainer import NiFiTrainer

    bb_dir, _ = setup
    cfg = tiny_config(bb_dir)
    cfg.diffusion.t0 = 399
    path = tmp_path / "t399.pt"
    NiFiTrainer(cfg, load_backbone(str(bb_dir)), perceptual=None).save(path)
    opts = dict(base_model=str(bb_dir), device="cpu", seed=0)
    assert B.create_method("nifi", ckpt=str(path), **opts).info()["t0"] == 399
    assert B.create_method("nifi", ckpt=str(path), t0=199, **opts).info()["t0"] == 199   # --t0 overrides
    assert B.create_method("img2img", **opts).info()["t0"] == 199                          # DEFAULT_T0


def test_checkpoint_records_its_restore_settings_and_restore_uses_them(setup, tmp_path):
    """best.pt/latest.pt record backbone, embeddings, t0 and dtype; without --base_model the restorer (and every
    eval method) loads the backbone the checkpoint was trained on."""
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.evaluation import baselines as B
    from nifi_lib.restoration.io import DEFAULT_BASE_MODEL, checkpoint_settings, resolve_restore_settings
    from nifi_lib.training.trainer import NiFiTrainer

    bb_dir, _ = setup
    cfg = tiny_config(bb_dir)
    path = tmp_path / "latest.pt"
    NiFiTrainer(cfg, load_backbone(str(bb_dir)), perceptual=None).save(path)
    s = checkpoint_settings(path)
    assert s == {"backbone": str(bb_dir), "backbone_kind": cfg.model.backbone_kind,
                 "embeddings": cfg.model.embeddings, "t0": 199, "dtype": cfg.model.dtype}
    m = B.create_method("nifi", ckpt=str(path), device="cpu", seed=0)      # no base_model given
    assert m.info()["base_model"] == str(bb_dir) and m(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    assert resolve_restore_settings(path, "other/backbone")[0] == "other/backbone"   # the caller wins
    assert resolve_restore_settings(None)[0] == DEFAULT_BASE_MODEL


def test_peft_export_loads_with_peft_and_diffusers_alone_and_restores_the_same_frame(setup, tmp_path):
    """``nifi export``: phi- in peft's save_pretrained layout; PeftModel.from_pretrained on the plain diffusers
    transformer and VAE restores the same frame as the training checkpoint."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from peft import PeftModel

    from nifi_lib.cli import main
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.diffusion.latents import to_model_range
    from nifi_lib.restoration.restorer import Restorer
    from nifi_lib.training.trainer import NiFiTrainer

    bb_dir, _ = setup
    tr = NiFiTrainer(tiny_config(bb_dir), load_backbone(str(bb_dir)), perceptual=None)
    randomize_lora(tr.bb.transformer, RESTORER, seed=5)
    randomize_lora(tr.bb.vae, RESTORER, seed=6)
    ckpt = tmp_path / "latest.pt"
    tr.save(ckpt)
    out = tmp_path / "export"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--authors_ckpt"]) == 0
    for sub in ("transformer", "vae"):
        assert (out / sub / "adapter_config.json").is_file() and (out / sub / "adapter_model.safetensors").is_file()
    settings = json.loads((out / "nifi_restore.json").read_text())
    assert settings["t0"] == 199 and settings["backbone"] == str(bb_dir) and (out / "restorer.ckpt").is_file()

    img = to_model_range(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    ref = Restorer.from_pretrained(None, ckpt=str(ckpt)).restore(img, seed=4)
    bb = load_backbone(str(bb_dir))
    tf = PeftModel.from_pretrained(SD3Transformer2DModel.from_pretrained(bb_dir, subfolder="transformer"),
                                   str(out / "transformer"), adapter_name=RESTORER).base_model.model
    vae = PeftModel.from_pretrained(AutoencoderKL.from_pretrained(bb_dir, subfolder="vae"),
                                    str(out / "vae"), adapter_name=RESTORER).base_model.model
    bb.transformer, bb.vae = tf.eval(), vae.eval()
    got = Restorer(bb, t0=settings["t0"], adapter=RESTORER).restore(img, seed=4)
    assert (got - ref).abs().max().item() < 1e-5
    assert (got - Restorer(load_backbone(str(bb_dir)), adapter=None).restore(img, seed=4)).abs().max() > 1e-3
