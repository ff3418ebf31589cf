"""Packaging invariants: pins agree, the CLI is installed, notebooks carry no outputs."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from nifi_lib.paths import REPO_ROOT


def _pins_pyproject():
    d = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    deps = d["project"]["dependencies"] + d["project"]["optional-dependencies"]["test"]
    return {x.split("==")[0].lower(): x.split("==")[1] for x in deps}


def test_every_dependency_is_pinned_and_environment_yml_agrees():
    d = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    deps = d["project"]["dependencies"] + d["project"]["optional-dependencies"]["test"]
    assert all("==" in x for x in deps), [x for x in deps if "==" not in x]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(x["pip"] for x in env["dependencies"] if isinstance(x, dict))
    env_pins = {x.split("==")[0].lower(): x.split("==")[1] for x in pip if "==" in x}
    assert env_pins == _pins_pyproject()
    assert "python=3.11" in env["dependencies"]


def test_torch_pins_are_the_issue_pins():
    pins = _pins_pyproject()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_committed_notebooks_have_no_outputs():
    files = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    for f in files:
        nb = json.loads((REPO_ROOT / f).read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{f} has outputs: strip them"
                assert cell.get("execution_count") is None, f"{f} has execution counts"


def test_every_notebook_has_a_parameters_cell_and_param_file():
    nbs = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert nbs, "no notebooks"
    for nb_path in nbs:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0].get("metadata", {}).get("tags", []), f"{nb_path.name}: first code cell not tagged"
        params = REPO_ROOT / "configs" / "notebooks" / f"{nb_path.stem}.yaml"
        assert params.is_file(), f"missing {params}"
        data = yaml.safe_load(params.read_text())
        assert set(data) >= {"embedded", "smoke"}


def test_nifi_console_script_lists_subcommands():
    exe = Path(sys.executable).parent / "nifi"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("restore", "run-notebooks"):
        assert cmd in out.stdout


def test_ci_runs_make_test_and_readme_names_two_commands():
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_partial_run_updates_the_report_without_erasing_it(tmp_path):
    """`nifi run-notebooks --only 08` replaces 08's row and keeps the others; another profile starts afresh."""
    from nifi_lib.experiments.notebook_runner import merge_records, write_report

    rec = lambda nb, s: {"notebook": nb, "status": "ok", "seconds": s, "numbers": {"x": s}}  # noqa: E731
    write_report([rec("00_a.ipynb", 1.0), rec("08_b.ipynb", 2.0)], "embedded", tmp_path)
    merged = merge_records([rec("08_b.ipynb", 5.0)], "embedded", tmp_path)
    assert [(r["notebook"], r["seconds"]) for r in merged] == [("00_a.ipynb", 1.0), ("08_b.ipynb", 5.0)]
    write_report(merged, "embedded", tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["total_seconds"] == 6.0 and len(data["notebooks"]) == 2
    assert "| 00_a.ipynb | ok | 1.0 |" in (tmp_path / "report.md").read_text()
    assert merge_records([rec("08_b.ipynb", 3.0)], "smoke", tmp_path) == [rec("08_b.ipynb", 3.0)]
