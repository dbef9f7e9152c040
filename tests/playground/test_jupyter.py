"""The playground for Jupyter (copd_lab.playground.widgets): the widget reacts to its knobs, and the .ipynb runs
headless."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from copd_lab.playground.widgets import playground

ROOT = Path(__file__).resolve().parents[2]


def test_the_widget_reruns_on_a_knob_and_names_a_refused_setting():
    ui = playground({"cycles": 2, "baselines": "experts"})
    first = ui.result
    assert first.config.copd.cycles == 2 and first.config.sim.styles == 8
    ui.knobs["styles"].value = 1  # as a user's slider, let go
    assert ui.result is not first and ui.result.config.sim.styles == 1 and ui.error is None
    ui.knobs["conflict"].value = 0.8  # with shared skill 0.5: refused, by name
    assert ui.result is None and "conflict = 0.8 is not allowed" in ui.error
    assert len(ui.children) == 2 and len(ui.children[0].children) == 5  # a column per panel section


def test_the_jupyter_notebook_runs_headless_and_builds_the_widget(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    notebook = nbformat.read(ROOT / "notebooks" / "copd_playground_jupyter.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    widget = notebook.cells[1].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in widget
    printed = "".join(o.get("text", "") for o in notebook.cells[2].outputs if o.get("name") == "stdout")
    assert printed.startswith("| model | text | image | video |") and "| copd |" in printed
