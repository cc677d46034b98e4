"""The notebooks in notebooks/: stored without outputs, and executed top to bottom.

Each notebook runs in a fresh ``python3`` kernel (nbclient) with ``FPN_JAX_NOTEBOOK_TINY=1``
(a few hundred images, 1-2 epochs, small networks), the shared MNIST IDX files, an empty
``FPN_JAX_HOME`` (no cached base model is used) and every figure and checkpoint under the
test's temporary folder. A cell that raises fails the test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("mnist_colab_tpu", "plug_into_your_autoencoder")
MNIST = ROOT.parent / "shared" / "data" / "mnist"
HAVE_MNIST = all((MNIST / f"{name}.gz").exists() or (MNIST / name).exists() for name in (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
CELL_TIMEOUT_S = 600


def _read(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    return notebook


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    notebook = _read(name)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for index, cell in enumerate(code):
        where = f"{name}.ipynb, code cell {index}"
        assert cell.outputs == [], f"{where} is stored with outputs"
        assert cell.execution_count is None, f"{where} is stored with an execution count"
        assert "execution" not in cell.metadata, f"{where} is stored with execution timings"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def _outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the cells printed or displayed (stdout, text/markdown, text/plain), and the number of PNGs shown."""
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                images += "image/png" in output.data
                text.append(output.data.get("text/markdown", output.data.get("text/plain", "")))
    return "\n".join(text), images


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, tuple[nbformat.NotebookNode, Path, float] | BaseException]:
    """Both notebooks executed at the same time, each in its own kernel and temporary folder.

    The tiny runs are dominated by XLA compilation, which is single-threaded: two kernels side by
    side take about as long as one. Returns, per notebook, (executed notebook, its folder, seconds)
    or the exception its execution raised (a ``CellExecutionError`` names the cell and traceback).
    """
    if not HAVE_MNIST:
        pytest.skip(f"no MNIST IDX files in {MNIST}")
    root = tmp_path_factory.mktemp("notebooks")

    async def execute(name: str) -> tuple[nbformat.NotebookNode, Path, float]:
        folder = root / name
        folder.mkdir()
        env = os.environ | {
            "FPN_JAX_NOTEBOOK_TINY": "1",
            "FPN_JAX_DATA_DIR": str(MNIST),
            "FPN_JAX_HOME": str(folder / "fpn_jax_home"),  # empty: no cached base model is used
            "FPN_JAX_NOTEBOOK_OUT": str(folder / "out"),
            # the kernel must import this checkout's fpn_jax, whatever is installed
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        notebook = _read(name)
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}})  # the kernel's working folder
        start = time.perf_counter()
        await client.async_execute(env=env)  # raises CellExecutionError if any cell fails
        return notebook, folder, time.perf_counter() - start

    async def execute_all():
        return await asyncio.gather(*(execute(name) for name in NAMES), return_exceptions=True)

    return dict(zip(NAMES, asyncio.run(execute_all()), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_top_to_bottom(name, executed):
    result = executed[name]
    if isinstance(result, BaseException):
        raise result
    notebook, folder, seconds = result
    print(f"{name}.ipynb executed in {seconds:.1f} s")
    home, out = folder / "fpn_jax_home", folder / "out"
    text, images = _outputs(notebook)
    assert "Traceback" not in text
    assert not (home / "models").exists(), "the tiny configuration wrote to the model cache"
    if name == "mnist_colab_tpu":
        assert "tiny configuration" in text and "backend:" in text and "device(s):" in text
        assert "| **all** |" in text and "0.9677" in text  # the classification table, beside the paper
        assert images == 1 and (out / name / "samples.png").stat().st_size > 1000
    else:
        figures = ["my_ae_reconstructions.png", "samples.png", "style_transfer.png"]
        if importlib.util.find_spec("torch") is not None:
            figures.append("converted_reconstructions.png")
            assert "max |z_jax - z_torch|" in text  # the converted model was checked against torch
        else:
            assert "Section (b) skipped" in text
        assert images == len(figures)
        for figure in figures:
            assert (out / name / figure).stat().st_size > 1000, figure
        assert "| test accuracy |" in text
