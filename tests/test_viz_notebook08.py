"""Notebook 08 end to end, headless: papermill with the smoke parameters (no run folder: the demo run is built),
then ``nbconvert --to html``; the saved widget state, the widget view, the figure images and files are checked."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from nifi_lib.paths import CONFIGS_DIR, NOTEBOOKS_DIR, REPO_ROOT

NB = "08_visual_comparison"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    pm = pytest.importorskip("papermill")
    tmp = tmp_path_factory.mktemp("nb08")
    params = yaml.safe_load((CONFIGS_DIR / "notebooks" / f"{NB}.yaml").read_text())["smoke"]
    params.update(run_dir=str(tmp / "no_run"), demo_dir=str(tmp / "demo"), figures_dir=str(tmp / "figures"))
    out = tmp / f"{NB}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{NB}.ipynb"), str(out), parameters=params, kernel_name="python3",
                        cwd=str(REPO_ROOT), progress_bar=False)
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(out)], check=True, capture_output=True,
                   timeout=120)
    return tmp, json.loads(out.read_text()), (tmp / f"{NB}.html").read_text()


def test_notebook_source_conventions():
    nb = json.loads((NOTEBOOKS_DIR / f"{NB}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(not c.get("outputs") for c in code)       # committed without outputs
    src = "".join(code[0]["source"])
    for p in ("run_dir", "pairs_dir", "outputs_dir", "split", "scene", "rate", "view", "methods"):
        assert f"\n{p} = " in "\n" + src
    prof = yaml.safe_load((CONFIGS_DIR / "notebooks" / f"{NB}.yaml").read_text())
    assert set(prof) == {"embedded", "smoke", "paper"} and prof["embedded"]["run_dir"] == "runs/embedded"


def test_widget_state_and_figures(executed):
    tmp, nb, html = executed
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    state = nb["metadata"]["widgets"][WIDGET_STATE]["state"]
    models = list(state.values())
    by_desc = {m["state"].get("description"): m for m in models if m["model_name"] in ("IntSliderModel", "DropdownModel")}
    assert by_desc["split"]["state"]["value"] == 32 and by_desc["split"]["state"]["max"] == 64   # 64 px frames
    scene = by_desc["scene"]["state"]
    assert scene["_options_labels"][scene["index"]] == "boxes"
    assert [by_desc["rate"]["state"]["_options_labels"][i] for i in range(2)] == ["0.5", "1.0"]
    assert {"crop x", "crop y", "crop size", "view", "left", "right"} <= set(by_desc)
    assert sum(m["model_name"] == "ImageModel" for m in models) >= 3
    views = [o["data"][WIDGET_VIEW]["model_id"] for o in outputs if WIDGET_VIEW in o.get("data", {})]
    assert len(views) == 1 and views[0] in state and state[views[0]]["model_name"] == "VBoxModel"
    # the HTML export carries the widget state and the static figures
    assert WIDGET_STATE in html and html.count("data:image/png;base64") >= 7
    figs = tmp / "figures"
    for name in ("fig3_0.5", "fig3_1.0", "contact_rate_0.5", "contact_rate_1.0", "zoom", "split", "diff", "fly_through"):
        assert (figs / f"{NB}_{name}.png").stat().st_size > 1000, name
    text = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream")
    assert "using a demo run" in text and str(figs / f"{NB}_fig3_1.0.png") in text
    assert (tmp / "demo/outputs/none/embedded/boxes/rate_1.0/test/000.png").is_file()
    # the fly-through: an inline mp4 (HTML5 video) and its flicker numbers, frames under the demo folder
    assert "flicker (mean |f_t+1 - f_t|): compressed" in text and "frozen base" in text
    assert any("<video" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    fly = json.loads((tmp / "demo/render_path/boxes_0.5_spiral/render_path.json").read_text())
    assert fly["frames"] == 8 and fly["video_frames"] == 8 and fly["flicker"]["restored"] > 0
