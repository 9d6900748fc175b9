"""The example notebook runs top to bottom in a fresh kernel (a smoke test of the notebook
experience: reprs, progress bars, a LocalCluster and futures)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebooks" / "partita_tour.ipynb"


def test_the_example_notebook_runs_headless(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # The array's repr is the HTML one, with its chunk grid.
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("4000" in h and "<svg" in h for h in html), html[:1]
