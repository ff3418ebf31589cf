"""``nifi rehearse --shape tiny`` end to end on the CPU (a few minutes on 2 cores), its failure path and --resume.

One folder serves both: first a rehearsal with a deliberately bad ``--scenes`` (synthesize fails, its dependents
are skipped, the backbone is still built), then ``--resume`` on the procedural scenes, which keeps the backbone
and runs the rest.
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


def _rehearse(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1"}
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


def test_notebook_params_are_declared_and_scoped(tmp_path):
    """Every parameter the notebooks stage passes is declared by a notebook (run-notebooks refuses typos), and
    the scoped ones reach only their notebook."""
    from nifi_lib.experiments import notebook_runner as NR

    plan = R.make_plan(R_args(tmp_path))
    extra = NR.command_line_parameters([f"{k}={json.dumps(v)}" for k, v in R.notebook_params(plan).items()])
    notebooks = sorted((REPO / "notebooks").glob("0*.ipynb"))
    NR.check_command_line_parameters(extra, notebooks)          # raises on a name no notebook declares
    nb01, nb08 = (next((REPO / "notebooks").glob(f"{p}_*.ipynb")) for p in ("01", "08"))
    p01 = NR.prepared_parameters(nb01, "paper", tmp_path, extra=extra)
    p08 = NR.prepared_parameters(nb08, "paper", tmp_path, extra=extra)
    assert p01["scene"] == str(plan.train_scene_dirs()[0]) and p01["pairs_root"] == str(plan.train_pairs)
    assert "scene" not in {k for (pre, k) in extra if pre is None}
    assert p08["outputs_dir"] == str(plan.out / "outputs")


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
