"""``nifi embedded-assets --tiny``: the whole rebuild chain on the CPU, its log and its resume."""
from __future__ import annotations

import json

import pytest
import torch

from nifi_lib.cli import main
from nifi_lib.experiments.embedded_assets import AssetsError, build_assets, load_assets_config


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def test_tiny_chain_outputs_log_and_resume(tmp_path, capsys):
    out = tmp_path / "assets"
    # the order of the GPU session (scripts/device_session.sh): frames + prior in one process, the fits in
    # another, then the NiFi stage; run one after the other here, each merging its entry into the log
    assert main(["embedded-assets", "--tiny", "--out", str(out), "--quiet", "--stage", "frames,prior,decoder"]) == 0
    frames = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "scenes").rglob("*.png"))}
    assert len(frames) == 3 * 9 + 9 and not list((out / "scenes").rglob("*.ply"))   # 2 + 1 worlds, 1 prior-only
    assert main(["embedded-assets", "--tiny", "--out", str(out), "--quiet", "--stage", "scenes,pairs"]) == 0
    # the fits left every frame the prior read as it was (same file, never rewritten)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "scenes").rglob("*.png"))} == frames
    assert main(["embedded-assets", "--tiny", "--out", str(out), "--quiet", "--stage", "nifi_wo_t0"]) == 0
    assert main(["embedded-assets", "--tiny", "--out", str(out), "--quiet", "--stage", "nifi,evaluate"]) == 0
    log = json.loads((out / "assets_log.json").read_text())
    assert list(log["stages"]) == ["frames", "prior", "decoder", "scenes", "pairs", "nifi_wo_t0", "nifi", "evaluate"]
    assert log["last_run"] == {"ran": ["nifi", "evaluate"], "skipped": [], "command": log["last_run"]["command"]}
    assert log["device"] == "cpu" and log["config_file"].endswith("embedded_assets_tiny.yaml")
    for name, st in log["stages"].items():
        assert st["seconds"] > 0 and st["outputs"], name
        assert all(b > 0 for b in st["bytes"].values()), name
    # scenes: train and held-out worlds
    assert sorted(p.name for p in (out / "scenes" / "train").iterdir()) == ["world_0", "world_1"]
    assert (out / "scenes" / "heldout" / "world_heldout" / "point_cloud.ply").is_file()
    # the paired prior-only world: fitted and paired for NiFi, still all of its views in the prior's images
    assert (out / "scenes" / "prior_only" / "prior_0" / "point_cloud.ply").is_file()
    assert sorted(p.name for p in (out / "pairs" / "embedded").iterdir()
                  if p.is_dir()) == ["prior_0", "world_0", "world_1"]
    # prior: the v3 architecture at 32 px, stored in fp16, with its held-out reconstruction PSNR
    info = json.loads((out / "prior" / "nifi_backbone.json").read_text())
    assert info["parameters"] == {"vae": 4233283, "transformer": 5091520}
    # 2 worlds x 7 train views + every view of the prior-only world; held out: test views + the held-out world
    assert info["num_images"] == 14 + 9 and info["num_heldout_images"] == 2 * 2 + 9
    assert info["heldout_vae_psnr"] > 0 and info["config"]["resolution"] == 32
    from safetensors import safe_open
    with safe_open(str(out / "prior" / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    # decoder: the prior with a fine-tuned decoder; everything else (the transformer, the encoder, the latent
    # scale, the prompts) byte for byte the prior's
    dec = out / "prior_decoder"
    dinfo = json.loads((dec / "nifi_backbone.json").read_text())
    run = dinfo["decoder_finetune"]
    assert run["steps_done"] == 3 and run["config"]["vae_gan_weight"] == 0.5
    assert run["config"]["vae_train_encoder"] is False and run["config"]["resolution"] == 32
    assert run["num_images"] == 14 + 9 and run["num_heldout_images"] == 2 * 2 + 9
    vae_cfg = lambda d: json.loads((d / "vae" / "config.json").read_text())  # noqa: E731
    assert vae_cfg(dec)["scaling_factor"] == vae_cfg(out / "prior")["scaling_factor"]
    for f in ("transformer/diffusion_pytorch_model.safetensors", "prompt_embeds.npz"):
        assert (dec / f).read_bytes() == (out / "prior" / f).read_bytes(), f
    with safe_open(str(out / "prior" / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as a, \
            safe_open(str(dec / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        same = {k: torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()}
    assert all(v for k, v in same.items() if k.startswith(("encoder.", "quant_conv.")))
    assert not all(v for k, v in same.items() if k.startswith("decoder."))   # the decoder did train
    # nifi: the checkpoint trained on the fine-tuned backbone, pairs of the held-out world apart
    summary = json.loads((out / "nifi" / "train_summary.json").read_text())
    assert summary["config"]["model"]["backbone"] == str(dec)
    assert summary["val_split"] == "train_holdout"
    # the ablation: the same run but for t0 = T (trained the way notebooks 06/07 evaluate it)
    ablation = json.loads((out / "nifi_wo_t0" / "train_summary.json").read_text())
    assert ablation["config"]["diffusion"]["t0"] == 1000 and summary["config"]["diffusion"]["t0"] == 199
    assert ablation["config"]["train"] == summary["config"]["train"]
    assert ablation["steps"] == summary["steps"]
    for f in ("best.pt", "train_log.csv", "config.yaml"):
        assert (out / "nifi" / f).is_file()
    assert (out / "pairs_heldout" / "embedded" / "world_heldout" / "manifest.json").is_file()
    assert not (out / "pairs" / "embedded" / "world_heldout").exists()
    # evaluate: the held-out world's 2 test views x 3 rates and the 3 NiFi worlds' 6 x 3, every method scored
    ev = out / "evaluation"
    for name, pairs in (("heldout", 6), ("validation", 18)):
        bench = json.loads((ev / f"{name}_benchmark.json").read_text())
        assert len(bench["records"]) == 5 * pairs and bench["config"]["metrics"] == ["psnr", "ssim"]   # a record a method
        assert set(bench["config"]["methods"]) == {"none", "img2img", "base_t0", "nifi_wo_t0", "nifi"}
        sharp = json.loads((ev / f"{name}_sharpness.json").read_text())
        assert set(sharp["hf_ratio"]) == {"degraded", "base", "nifi", "nifi_wo_t0", "clean_vae", "clean"}
        assert sharp["hf_ratio"]["clean"]["all"] == pytest.approx(1.0) and sharp["count"]["all"] == pairs
    before = {k: v["finished_at"] for k, v in log["stages"].items()}
    # resume: every stage finished with the same config is skipped
    capsys.readouterr()
    assert main(["embedded-assets", "--tiny", "--out", str(out), "--quiet", "--resume"]) == 0
    assert capsys.readouterr().out.count("skipped") == 8
    log2 = json.loads((out / "assets_log.json").read_text())
    assert log2["last_run"]["skipped"] == ["frames", "scenes", "prior", "decoder", "pairs", "nifi", "nifi_wo_t0",
                                           "evaluate"]
    assert log2["last_run"]["ran"] == []
    assert {k: v["finished_at"] for k, v in log2["stages"].items()} == before
    assert all(not p.startswith("/") for st in log2["stages"].values() for p in st["outputs"])
    # the folder moves (the GPU's fresh machine per call); a stage whose output vanished runs again under
    # --resume, the others stay skipped
    import shutil
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    shutil.rmtree(moved / "nifi")
    log3 = build_assets(moved, "configs/embedded_assets_tiny.yaml", ("frames", "scenes", "prior", "pairs", "nifi"),
                        device="cpu", resume=True, progress=False)
    assert log3["last_run"] == {"ran": ["nifi"], "skipped": ["frames", "scenes", "prior", "pairs"], "command": []}
    assert (moved / "nifi" / "best.pt").is_file()


def test_assets_config_is_checked(tmp_path):
    cfg = load_assets_config("configs/embedded_assets_v3.yaml")
    assert cfg["scenes"]["preset"] == "v3" and cfg["prior"]["config"] == "configs/prior_v3.yaml"
    assert cfg["nifi"]["overrides"]["train"]["resolution"] == 128
    # v4: v3 with 250 prior-only worlds of 12 views (12 of them paired for NiFi at 48): the held-out world keeps
    # its seed (index 6 of the preset) and the prior's worlds are many more
    from nifi_lib.gs.scene_presets import get_preset
    v4 = load_assets_config("configs/embedded_assets_v4.yaml")
    # and the decoder fine-tune capped at 300 s instead of 480 (frames, prior and decoder in one session)
    assert v4["decoder"]["overrides"].pop("vae_max_seconds") == 300
    assert cfg["decoder"]["overrides"].pop("vae_max_seconds") == 480
    assert {k: v for k, v in v4.items() if k != "scenes"} == {k: v for k, v in cfg.items() if k != "scenes"}
    p4 = get_preset(v4["scenes"]["preset"], **v4["scenes"]["overrides"])
    assert (p4.prior_worlds, p4.prior_views, p4.paired_prior_worlds) == (250, 12, 12)
    assert (p4.train, p4.heldout) == (get_preset("v3").train, ["world_heldout"])   # seeds: train, held out, prior
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes: {preset: v3, colour: red}\nprior: {config: x}\nsynthesis: {}\nnifi: {config: y}\n")
    with pytest.raises(AssetsError, match="colour"):
        load_assets_config(bad)
    with pytest.raises(AssetsError, match="unknown stages"):
        build_assets(tmp_path, "configs/embedded_assets_tiny.yaml", ("render",), device="cpu")
