"""examples/walkthrough.ipynb runs top to bottom and draws its two plots; the committed copy has no outputs.

The notebook is run on a small random-weight model: GPT2_NOTEBOOK_MODELS_DIR points it there, so
nothing is downloaded. The kernel is "python3", which jupyter_client starts with this interpreter.
"""
import os

import nbclient
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "walkthrough.ipynb")
PLOT_CELLS = ("heatmap", "next-token")  # cell ids of the attention heatmap and the bar chart
CELL_TIMEOUT = 120  # seconds; the whole notebook takes a few on the small model


def read_notebook():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_committed_notebook_has_no_outputs():
    for cell in read_notebook().cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"cell {cell.id} has outputs: clear them before committing"


def test_notebook_runs_and_draws_both_plots(tiny_models, monkeypatch, tmp_path):
    """...in a kernel that cannot import TensorFlow: README says opening the notebook needs
    requirements.txt, jupyterlab and matplotlib only."""
    import utils

    utils.load_encoder_hparams_and_params("124M", tiny_models)  # checks the checksums here, not in the kernel
    monkeypatch.setenv("GPT2_NOTEBOOK_MODELS_DIR", tiny_models)
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None  # import fails\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    # The kernel's own inline backend: it draws with Agg (no display needed) and sends each figure
    # as a PNG. A plain MPLBACKEND=Agg inherited from CI would draw nothing.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    nb = read_notebook()
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    cells = {cell.id: cell for cell in nb.cells}
    for cell_id in PLOT_CELLS:
        images = [out for out in cells[cell_id].outputs if "image/png" in out.get("data", {})]
        assert len(images) == 1, f"cell {cell_id} should show one plot, shows {len(images)}"
