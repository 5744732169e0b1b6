"""The notebooks in examples/ run top to bottom and draw their plots; the committed copies have no outputs.

walkthrough.ipynb follows one prompt through the model; finetune.ipynb checks a block's gradients against
finite differences and fine-tunes; classify.ipynb checks a classifier head's gradients the same way, fine-tunes
one and asks zero- and few-shot. Each is run on a small random-weight model: GPT2_NOTEBOOK_MODELS_DIR
points it there, so nothing is downloaded. The kernel is "python3", which jupyter_client starts with this
interpreter.
"""
import os
import re

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each notebook with the ids of the cells that must show one plot.
NOTEBOOKS = {"walkthrough.ipynb": ("heatmap", "next-token"), "finetune.ipynb": ("curves",),
             "classify.ipynb": ("accuracy", "confusion")}
CELL_TIMEOUT = 120  # seconds; a whole notebook takes a few on the small model


def read_notebook(name):
    nb = nbformat.read(os.path.join(ROOT, "examples", name), as_version=4)
    nbformat.validate(nb)
    return nb


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    for cell in read_notebook(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}: cell {cell.id} has outputs: clear them before committing"


def run_notebook(name, models_dir, monkeypatch, tmp_path):
    """The notebook executed in a kernel that cannot import TensorFlow (README says opening the notebooks
    needs requirements.txt, jupyterlab and matplotlib only); its cells by id."""
    import utils

    utils.load_encoder_hparams_and_params("124M", models_dir)  # checks the checksums here, not in the kernel
    monkeypatch.setenv("GPT2_NOTEBOOK_MODELS_DIR", models_dir)
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None  # import fails\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    # The kernel's own inline backend: it draws with Agg (no display needed) and sends each figure
    # as a PNG. A plain MPLBACKEND=Agg inherited from CI would draw nothing.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = read_notebook(name)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT, "examples")}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    return {cell.id: cell for cell in nb.cells}


def text_of(cell):
    return "".join(out.get("text", "") for out in cell.outputs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_draws_its_plots(tiny_models, monkeypatch, tmp_path, name):
    cells = run_notebook(name, tiny_models, monkeypatch, tmp_path)
    for cell_id in NOTEBOOKS[name]:
        images = [out for out in cells[cell_id].outputs if "image/png" in out.get("data", {})]
        assert len(images) == 1, f"{name}: cell {cell_id} should show one plot, shows {len(images)}"
    checked = {"finetune.ipynb": 7, "classify.ipynb": 5}  # how many gradients the learner checks
    if name in checked:
        errors = [float(e) for e in re.findall(r"(\d\.\de-\d+)\s*$", text_of(cells["check"]), re.M)]
        assert len(errors) == checked[name] and max(errors) < 1e-6, text_of(cells["check"])  # the check agrees
    if name == "finetune.ipynb":
        val = [float(v) for v in re.findall(r"validation loss (\d+\.\d+)", text_of(cells["finetune"]))]
        assert len(val) == 4 and val[-1] < val[0], text_of(cells["finetune"])
    if name == "classify.ipynb":
        accuracies = [float(a) for a in re.findall(r"training accuracy (\d\.\d+)", text_of(cells["finetune"]))]
        assert len(accuracies) == 6 and accuracies[-1] >= 0.9 > accuracies[0], text_of(cells["finetune"])  # it learns
        assert re.search(r"2-shot: acc \d\.\d\d, acc_norm \d\.\d\d", text_of(cells["shots"])), text_of(cells["shots"])
