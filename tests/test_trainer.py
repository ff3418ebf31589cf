"""The NiFi trainer: seed outputs, bit-exact resume, NaN policy, gradient routing, 2-process gloo."""
import csv
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from helpers import randomize_lora
from trainer_helpers import make_backbone_dir, make_pairs, tiny_config
from nifi_lib.restoration.io import safe_torch_load
from nifi_lib.restoration.lora import CRITIC, RESTORER
from nifi_lib.training.trainer import NiFiTrainer, TrainingError, build_perceptual, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return make_backbone_dir(root / "bb"), make_pairs(root / "pairs")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_writes_the_seed_outputs(setup, tmp_path):
    bb_dir, pairs = setup
    summary = train(tiny_config(bb_dir), pairs, tmp_path / "exp", progress=False)
    exp = tmp_path / "exp"
    for f in ("latest.pt", "best.pt", "train_log.csv", "train_summary.json"):
        assert (exp / f).is_file(), f
    rows = _rows(exp / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss_total"])) and math.isfinite(float(r["loss_critic"])) for r in rows)
    js = json.loads((exp / "train_summary.json").read_text())
    # 3 train views per scene: view 000 (both rates) is held out for validation, 2 x 2 x 2 pairs remain
    assert js["steps"] == 4 and js["data"]["train_pairs"] == 8 and js["data"]["rates"] == ["0.1", "1.0"]
    assert js["data"]["val_pairs"] == 4 and js["val_split"] == "train_holdout" and js["val_holdout_every"] == 8
    assert js["validation_images"] and all("/train/clean/000." in p for p in js["validation_images"])
    assert js["best_metric"]["name"] == "psnr" and js["best_metric"]["step"] in (2, 4)
    assert js["weights"]["perceptual"].startswith("none")
    ck = safe_torch_load(exp / "latest.pt")  # weights_only loads it
    assert ck["step"] == 4 and any(k.startswith("transformer.critic/") for k in ck["adapters"])
    assert not any("lora_" not in k for k in ck["adapters"]), "checkpoint must hold adapters only"


def test_resume_is_bit_exact_and_log_has_no_duplicates(setup, tmp_path):
    bb_dir, pairs = setup
    cfg = tiny_config(bb_dir)
    train(cfg, pairs, tmp_path / "full", progress=False)
    # interrupted run: stop after step 2 but pretend rows 3.. were logged past the checkpoint
    train(tiny_config(bb_dir), pairs, tmp_path / "cut", progress=False, stop_after=2)
    with open(tmp_path / "cut" / "train_log.csv", "a") as f:
        f.write("3,9,9,9,9,9,9,9,9,9,9,9,0,0\n")
    train(tiny_config(bb_dir), pairs, tmp_path / "cut", progress=False, resume=True)
    steps = [int(r["step"]) for r in _rows(tmp_path / "cut" / "train_log.csv")]
    assert steps == [1, 2, 3, 4]
    a = safe_torch_load(tmp_path / "full" / "latest.pt")["adapters"]
    b = safe_torch_load(tmp_path / "cut" / "latest.pt")["adapters"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    la = [r["loss_total"] for r in _rows(tmp_path / "full" / "train_log.csv")]
    lb = [r["loss_total"] for r in _rows(tmp_path / "cut" / "train_log.csv")]
    assert la == lb


def test_resume_without_checkpoint_is_clear(setup, tmp_path):
    bb_dir, pairs = setup
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_config(bb_dir), pairs, tmp_path / "none", progress=False, resume=True)


def _trainer(bb_dir, **train_kw):
    from nifi_lib.diffusion.backbone import load_backbone

    cfg = tiny_config(bb_dir, **train_kw)
    bb = load_backbone(str(bb_dir))
    return NiFiTrainer(cfg, bb, perceptual=None)


def test_step_updates_only_adapters_and_distillation_reaches_phi_minus(setup):
    bb_dir, _ = setup
    tr = _trainer(bb_dir)
    base = {n: p.detach().clone() for m in (tr.bb.transformer, tr.bb.vae) for n, p in m.named_parameters()
            if "lora_" not in n}
    torch.manual_seed(0)
    clean, deg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    # the Eq. 4/5 surrogate alone must produce gradients on phi- (it is not computed under no_grad)
    tr.cfg.loss_weights.l2 = 0.0
    info = tr.train_step(clean, deg)
    assert info["skipped"] == 0
    assert info["grad_norm_minus"] > 0 and info["grad_norm_plus"] > 0
    for m in (tr.bb.transformer, tr.bb.vae):
        for n, p in m.named_parameters():
            if "lora_" not in n:
                assert torch.equal(p, base[n]), f"frozen weight {n} changed"
                assert p.grad is None


def test_nan_policy(setup, tmp_path, monkeypatch):
    bb_dir, pairs = setup
    import nifi_lib.training.trainer as T

    real = T.perceptual_matching_loss

    def nan_after_two(*a, **k):
        total, terms = real(*a, **k)
        nan_after_two.calls += 1
        return (total * float("nan") if nan_after_two.calls > 2 else total), terms
    nan_after_two.calls = 0
    monkeypatch.setattr(T, "perceptual_matching_loss", nan_after_two)
    s = train(tiny_config(bb_dir, nan_policy="skip"), pairs, tmp_path / "skip", progress=False)
    assert s["skipped_steps"] == 2 and s["steps"] == 4
    ck = safe_torch_load(tmp_path / "skip" / "latest.pt")
    assert all(torch.isfinite(v).all() for v in ck["adapters"].values())
    nan_after_two.calls = 0
    with pytest.raises(TrainingError, match="non-finite loss at step 3"):
        train(tiny_config(bb_dir, nan_policy="stop"), pairs, tmp_path / "stop", progress=False)
    ck = safe_torch_load(tmp_path / "stop" / "latest.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["adapters"].values())


def _rank_data(rank):
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    return torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)


def _all_grads(tr):
    out = {}
    for attr in ("transformer", "vae"):
        for n, p in getattr(tr.bb, attr).named_parameters():
            if "lora_" in n:
                out[f"{attr}.{n}"] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    return out


def _gloo_worker(rank, world, bb_dir, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tr = _trainer(bb_dir, grad_clip=1e9)   # no clipping: the averaged gradients are compared as they are
        assert set(tr._ddp) == {"minus", "plus"}, "past one process the trainer runs on DistributedDataParallel"
        before = {k: v.clone() for k, v in tr.adapters_flat().items()}
        info = tr.train_step(*_rank_data(rank))
        after = tr.adapters_flat()
        torch.save({"before": before, "after": after, "grads": _all_grads(tr), "loss": info["loss_total"],
                    "critic": info["loss_critic"]}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_keeps_adapters_identical(setup, tmp_path):
    """DDP on 2 gloo processes: identical adapters on both ranks, and each adapter's gradient is the mean of
    the per-rank gradients that one process computes on the same data with each rank's seeds, i.e. the
    gradient of the doubled batch's loss (the mean of the two ranks' losses)."""
    bb_dir, _ = setup
    port = 29500 + os.getpid() % 1000
    mp.spawn(_gloo_worker, args=(2, bb_dir, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0["before"][k], r1["before"][k]) for k in r0["before"])
    changed = [k for k in r0["after"] if not torch.equal(r0["after"][k], r0["before"][k])]
    assert changed, "the step changed no adapter"
    assert all(torch.equal(r0["after"][k], r1["after"][k]) for k in r0["after"]), "ranks diverged"
    # one process, each rank's data and seeds in turn
    ref_grads, ref_loss = [], []
    for rank in range(2):
        tr = _trainer(bb_dir, grad_clip=1e9)
        seed = tr.cfg.train.seed * 1000 + rank
        tr.generator.manual_seed(seed)
        tr.noise_generator.manual_seed(seed + 500_000)
        info = tr.train_step(*_rank_data(rank))
        ref_grads.append(_all_grads(tr))
        ref_loss.append((float(info["loss_total"]), float(info["loss_critic"])))
    for rank, r in enumerate((r0, r1)):
        assert float(r["loss"]) == pytest.approx(ref_loss[rank][0], rel=1e-5)
        assert float(r["critic"]) == pytest.approx(ref_loss[rank][1], rel=1e-5)
    mean = {k: (ref_grads[0][k] + ref_grads[1][k]) / 2 for k in ref_grads[0]}
    assert any(mean[k].abs().max() > 0 for k in mean)
    for k in mean:
        for r in (r0, r1):
            assert torch.allclose(r["grads"][k], mean[k], atol=1e-6, rtol=1e-4), k


# ---- the gradient routing of each term (Eq. 4, Eq. 6's LPIPS), prompt dropout, checkpointing ------------
def _phi_minus_grads(tr) -> dict[str, torch.Tensor]:
    """phi-'s gradients left by the last train_step (zeroed only at the start of the next phi- update)."""
    out = {}
    for attr in ("transformer", "vae"):
        for n, p in getattr(tr.bb, attr).named_parameters():
            if "lora_" in n and f".{RESTORER}." in n + ".":
                out[f"{attr}.{n}"] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    return out


def _assert_base_untouched(tr, base):
    for m in (tr.bb.transformer, tr.bb.vae):
        for n, p in m.named_parameters():
            if "lora_" not in n:
                assert torch.equal(p, base[n]), f"frozen weight {n} changed"
                assert p.grad is None, f"frozen weight {n} got a gradient"


def _base(tr):
    return {n: p.detach().clone() for m in (tr.bb.transformer, tr.bb.vae) for n, p in m.named_parameters()
            if "lora_" not in n}


def _eq4_only_step(bb_dir, random_critic: bool):
    tr = _trainer(bb_dir)
    tr.cfg.loss_weights.l2 = 0.0          # Eq. 6 with the KL term alone ...
    tr.cfg.loss_weights.alpha = 1.0       # ... and that term Eq. 4 alone (no Eq. 5 ground-truth term)
    if random_critic:                     # phi+ != 0: s_restore != s_real
        randomize_lora(tr.bb.transformer, CRITIC, seed=4, scale=0.2)
    base = _base(tr)
    g = torch.Generator().manual_seed(0)
    info = tr.train_step(torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g))
    return tr, base, info


def test_eq4_term_alone_reaches_phi_minus_with_a_random_critic(setup):
    """Eq. 4 (alpha = 1, no l2/LPIPS): with a critic different from the teacher the KL surrogate's gradient
    reaches phi- (transformer and VAE-encoder LoRA), and no frozen weight. Control: with phi+ = 0 the critic
    IS the teacher, Eq. 4's gradient is exactly zero, so the nonzero gradient comes from s_restore - s_real."""
    bb_dir, _ = setup
    tr0, _, info0 = _eq4_only_step(bb_dir, random_critic=False)
    assert all(float(v.abs().max()) == 0.0 for v in _phi_minus_grads(tr0).values())
    assert float(info0["dm_grad_norm"]) == 0.0
    tr, base, info = _eq4_only_step(bb_dir, random_critic=True)
    assert info["skipped"] == 0 and math.isfinite(float(info["loss_kl"]))
    assert float(info["dm_grad_norm"]) > 0 and float(info["grad_norm_minus"]) > 0
    grads = _phi_minus_grads(tr)
    for attr in ("transformer", "vae"):
        assert any(float(v.abs().max()) > 0 for k, v in grads.items() if k.startswith(attr)), \
            f"the Eq. 4 gradient does not reach phi- in the {attr}"
    _assert_base_untouched(tr, base)


def test_eq6_lpips_term_with_real_weights_reaches_phi_minus(setup, real_lpips):
    """Eq. 6's LPIPS(D(x^), I) branch with the real LPIPS-alex weights (the trainer's own build_perceptual),
    alone (kl = l2 = 0): finite and > 0, its gradient reaches phi- through the decoder, and neither the
    backbone nor LPIPS changes."""
    from nifi_lib.diffusion.backbone import load_backbone

    bb_dir, _ = setup
    cfg = tiny_config(bb_dir)
    cfg.loss_weights.lpips, cfg.loss_weights.kl, cfg.loss_weights.l2 = 1.0, 0.0, 0.0
    perceptual, name, fallback = build_perceptual(cfg, "cpu")
    assert name == "lpips-alex" and not fallback
    lp_before = {n: p.detach().clone() for n, p in perceptual.named_parameters()}
    tr = NiFiTrainer(cfg, load_backbone(str(bb_dir)), perceptual=perceptual, perceptual_name=name)
    base = _base(tr)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 32, 32, generator=g)
    info = tr.train_step(clean, (clean + 0.2 * torch.rand(2, 3, 32, 32, generator=g)).clamp(0, 1))
    lp = float(info["loss_lpips"])
    assert info["skipped"] == 0 and math.isfinite(lp) and lp > 0
    assert float(info["loss_total"]) == pytest.approx(lp)
    assert float(info["grad_norm_minus"]) > 0
    grads = _phi_minus_grads(tr)
    for attr in ("transformer", "vae"):
        assert any(float(v.abs().max()) > 0 for k, v in grads.items() if k.startswith(attr)), \
            f"the LPIPS gradient does not reach phi- in the {attr}"
    _assert_base_untouched(tr, base)
    for n, p in perceptual.named_parameters():
        assert torch.equal(p, lp_before[n]) and p.grad is None, f"LPIPS weight {n} changed or got a gradient"


def _manual_cfg_denoise(tr, z, sigma, timestep, pe, pp):
    from nifi_lib.diffusion.flow import classifier_free_guidance
    from nifi_lib.diffusion.latents import transformer_velocity
    from nifi_lib.restoration.lora import adapter_scope

    npe, npp = tr.bb.prompt_batch(z.shape[0], null=True)
    with torch.no_grad(), adapter_scope(tr.bb.transformer, None):
        v_u = transformer_velocity(tr.bb.transformer, z, timestep, npe, npp).float()
        v_c = transformer_velocity(tr.bb.transformer, z, timestep, pe, pp).float()
    return z - sigma.view(-1, 1, 1, 1) * classifier_free_guidance(v_u, v_c, tr.cfg.model.guidance_scale)


def test_prompt_dropout_is_the_students_only(setup, monkeypatch):
    """prompt_dropout = 1: the student (Eq. 7) sees the null prompt, but s_real, s_restore (CFG) and the
    critic's Eq. 8 pass condition on the real prompt; the teacher's CFG output equals the one computed with
    the real prompt and differs from the all-null one."""
    import nifi_lib.training.trainer as T

    bb_dir, _ = setup
    tr = _trainer(bb_dir)
    tr.cfg.model.prompt_dropout, tr.cfg.model.guidance_scale = 1.0, 7.5
    real_pe, _ = tr.bb.prompt_batch(1)
    null_pe, _ = tr.bb.prompt_batch(1, null=True)
    assert not torch.equal(real_pe, null_pe)
    calls = []
    real_velocity = T.transformer_velocity

    def spy(transformer, x, t, pe, pp):
        calls.append(pe.detach().clone())
        return real_velocity(transformer, x, t, pe, pp)
    import nifi_lib.restoration.restorer as R   # the student's Eq. 7 runs in the restorer's one path

    monkeypatch.setattr(T, "transformer_velocity", spy)
    monkeypatch.setattr(R, "transformer_velocity", spy)
    g = torch.Generator().manual_seed(0)
    tr.train_step(torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g))
    # student (B), real score on x^_t and x_t with CFG (4B: null half, conditional half), critic score (2B),
    # critic's Eq. 8 pass (B)
    assert [c.shape[0] for c in calls] == [2, 8, 4, 2]
    is_real = lambda c: all(torch.equal(e, real_pe[0]) for e in c)   # noqa: E731
    is_null = lambda c: all(torch.equal(e, null_pe[0]) for e in c)   # noqa: E731
    assert is_null(calls[0]), "prompt dropout no longer reaches the student"
    for c in calls[1:3]:
        k = c.shape[0] // 2
        assert is_null(c[:k]) and is_real(c[k:]), "the CFG scores must guide with the real prompt"
    assert is_real(calls[3]), "the critic's Eq. 8 pass must use the real prompt"
    monkeypatch.setattr(T, "transformer_velocity", real_velocity)
    monkeypatch.setattr(R, "transformer_velocity", real_velocity)

    # the teacher's CFG denoiser with every sample "dropped" is the real-prompt CFG, not the all-null one
    gz = torch.Generator().manual_seed(1)
    z = torch.randn(2, tr.bb.transformer.config.in_channels, 4, 4, generator=gz)
    idx = torch.tensor([100, 700])
    sigma, timestep = tr.sigmas[idx], tr.timesteps[idx]
    with torch.no_grad():
        d = tr.guided_denoise(None, z, sigma, timestep, torch.ones(2, dtype=torch.bool))
    pe, pp = tr.bb.prompt_batch(2)
    npe, npp = tr.bb.prompt_batch(2, null=True)
    ref_real = _manual_cfg_denoise(tr, z, sigma, timestep, pe, pp)
    ref_null = _manual_cfg_denoise(tr, z, sigma, timestep, npe, npp)
    assert torch.allclose(d, ref_real, rtol=1e-5, atol=1e-5)
    assert (d - ref_null).abs().max() > 1e-3


def _one_checkpointed_step(bb_dir, checkpointing: bool):
    tr = _trainer(bb_dir, gradient_checkpointing=checkpointing)
    randomize_lora(tr.bb.transformer, RESTORER, seed=3, scale=0.1)
    randomize_lora(tr.bb.vae, RESTORER, seed=5, scale=0.1)
    randomize_lora(tr.bb.transformer, CRITIC, seed=4, scale=0.1)
    g = torch.Generator().manual_seed(0)
    info = tr.train_step(torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g))
    grads = {f"{attr}.{n}": p.grad.detach().clone() for attr in ("transformer", "vae")
             for n, p in getattr(tr.bb, attr).named_parameters() if "lora_" in n and p.grad is not None}
    return tr, info, grads


def test_gradient_checkpointing_gives_the_same_step(setup):
    """train.gradient_checkpointing: the backward recomputes each block with the adapter that ran its
    forward (phi- for Eq. 7, phi+ for Eq. 8), so one step gives the same phi-/phi+ gradients and updates as
    without checkpointing (and no CheckpointError)."""
    bb_dir, _ = setup
    tr_a, info_a, ga = _one_checkpointed_step(bb_dir, checkpointing=False)
    tr_b, info_b, gb = _one_checkpointed_step(bb_dir, checkpointing=True)
    assert tr_b.bb.transformer.gradient_checkpointing and tr_b.bb.vae.encoder.gradient_checkpointing
    assert ga.keys() == gb.keys() and any(f".{CRITIC}." in k for k in ga) and any(k.startswith("vae.") for k in ga)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-5, atol=1e-7), f"{k}: gradient differs with checkpointing"
    assert any(float(v.abs().max()) > 0 for v in ga.values())
    a, b = tr_a.adapters_flat(), tr_b.adapters_flat()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    for k in ("loss_total", "loss_critic", "grad_norm_minus", "grad_norm_plus"):
        assert torch.allclose(info_a[k], info_b[k], rtol=1e-5, atol=1e-7), k


def test_guidance_scale_one_skips_the_null_pass_with_the_same_scores(setup, monkeypatch):
    """w = 1 (the embedded prior's measured scale): CFG reduces to the conditional velocity, so the trainer runs
    one transformer pass per score instead of two and returns the CFG formula's value."""
    import nifi_lib.training.trainer as T

    bb_dir, _ = setup
    tr = _trainer(bb_dir)
    tr.cfg.model.guidance_scale = 1.0
    gz = torch.Generator().manual_seed(2)
    z = torch.randn(3, tr.bb.transformer.config.in_channels, 4, 4, generator=gz)
    idx = torch.tensor([60, 400, 900])
    sigma, timestep = tr.sigmas[idx], tr.timesteps[idx]
    sizes = []
    real_velocity = T.transformer_velocity

    def spy(transformer, x, t, pe, pp):
        sizes.append(x.shape[0])
        return real_velocity(transformer, x, t, pe, pp)
    monkeypatch.setattr(T, "transformer_velocity", spy)
    with torch.no_grad():
        d = tr.guided_denoise(None, z, sigma, timestep)
    monkeypatch.setattr(T, "transformer_velocity", real_velocity)
    assert sizes == [3], "w = 1 must not run the null-prompt pass"
    pe, pp = tr.bb.prompt_batch(3)
    assert torch.allclose(d, _manual_cfg_denoise(tr, z, sigma, timestep, pe, pp), atol=1e-5, rtol=1e-5)


def test_smoke_test_leaves_the_callers_config_alone(setup, tmp_path):
    bb_dir, pairs = setup
    cfg = tiny_config(bb_dir, max_steps=50, save_every=25)
    before = cfg.to_dict()
    s = train(cfg, pairs, tmp_path / "smoke", progress=False, smoke_test=True)
    assert s["steps"] == 4 and s["smoke_test"] is True      # the smoke settings did apply to the run
    assert cfg.to_dict() == before and cfg.train.max_steps == 50


def test_schedule_of_the_config_must_be_the_backbones(setup):
    from nifi_lib.diffusion.backbone import load_backbone
    from nifi_lib.training.trainer import check_schedule

    bb_dir, _ = setup
    bb = load_backbone(str(bb_dir))
    cfg = tiny_config(bb_dir)
    check_schedule(cfg, bb.scheduler)   # the tiny backbone: 1000 steps, shift 3 = the config's
    cfg.diffusion.shift = 1.0
    with pytest.raises(TrainingError, match=r"shift 3, .*diffusion.shift 1 "):
        NiFiTrainer(cfg, bb, perceptual=None)
    cfg.diffusion.shift, cfg.diffusion.num_train_timesteps = 3.0, 500
    with pytest.raises(TrainingError, match="num_train_timesteps 1000.*diffusion.num_train_timesteps 500"):
        check_schedule(cfg, bb.scheduler)


def test_max_seconds_stops_validates_and_saves_after_the_step_that_passes_it(setup, tmp_path):
    bb_dir, pairs = setup
    exp = tmp_path / "capped"
    # save/validate only every 100 steps: what is written at step 1 is written because the cap was reached
    summary = train(tiny_config(bb_dir, max_steps=50, save_every=100, val_every=100, max_seconds=1e-6),
                    pairs, exp, progress=False)
    assert summary["steps"] == 1 and "train.max_seconds" in summary["stopped_early"]
    assert [int(r["step"]) for r in _rows(exp / "train_log.csv")] == [1]
    assert [h["step"] for h in summary["validation"]] == [1]
    assert safe_torch_load(exp / "latest.pt")["step"] == 1 and (exp / "best.pt").is_file()
    uncapped = train(tiny_config(bb_dir, max_steps=2), pairs, tmp_path / "free", progress=False)
    assert uncapped["steps"] == 2 and uncapped["stopped_early"] is None


def test_max_seconds_must_be_positive(setup, tmp_path):
    bb_dir, pairs = setup
    with pytest.raises(TrainingError, match="max_seconds"):
        train(tiny_config(bb_dir, max_seconds=0), pairs, tmp_path / "bad", progress=False)


def test_train_vae_attention_chunked_is_the_same_training(setup):
    """``train.vae_attention: chunked`` puts the chunked processor on the VAE (diffusion/vae_attention.py) and the
    steps compute the same losses and gradients as diffusers' SDPA processor (fp32, two steps from the same seeds)."""
    from nifi_lib.diffusion.vae_attention import vae_attention_kind

    bb_dir, _ = setup
    torch.manual_seed(0)
    clean, deg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    runs = {}
    for kind in (None, "chunked"):
        tr = _trainer(bb_dir, vae_attention=kind)
        assert vae_attention_kind(tr.bb.vae) == (kind or "sdpa") and tr.bb.fast_paths.get("vae_attention") == kind
        infos = [tr.train_step(clean, deg) for _ in range(2)]
        runs[kind] = ([float(i["loss_total"]) for i in infos], [p.detach().clone() for p in tr.phi_minus])
    (la, pa), (lb, pb) = runs[None], runs["chunked"]
    assert lb == pytest.approx(la, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(pa, pb))
