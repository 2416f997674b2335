"""The teaching notebooks in ``notebooks/`` run top to bottom on this venv's Python, and are stored without outputs.

Each notebook is executed once per run of this module by nbclient, in a fresh kernel started from ``sys.executable``
with a temporary working directory; the tests then read the executed copy. The numbers are checked by the notebooks'
own ``assert`` cells: any cell error fails the run.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode
from traitlets import default

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_hugging_face_style.ipynb",
    "03_custom_step.ipynb",
    "04_from_a_hand_written_loop.ipynb",
]
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 120  # per cell; the slowest takes a few seconds on 2 cores
# Appended to each executed copy (never to the stored notebook): which interpreter and directory the kernel has.
PROBE = "import os, sys\nprint(sys.executable)\nprint(os.getcwd())"


class VenvKernelSpecs(KernelSpecManager):
    """Knows a single kernel, ``python3``, run by the interpreter running the tests.

    The ``python3`` kernelspec installed on a machine may start any Python (the venv's own says just ``python``, found
    on ``PATH``); this one cannot.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != KERNEL_NAME:
            raise NoSuchKernel(kernel_name)
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python ({sys.executable})",
            language="python",
            env={
                # ipykernel picks the inline backend only when MPLBACKEND is unset; a value inherited from the
                # test's environment (Agg on a CI machine, say) would keep the notebooks' figures from showing.
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                # The notebooks' nets are tiny: a second OpenMP thread gains nothing, and on a busy 2-core machine
                # (parallel test runs, other jobs) its spin-waits made the runs 2-4x slower.
                "OMP_NUM_THREADS": "1",
            },
        )


class VenvKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, looking kernels up in :class:`VenvKernelSpecs` only."""

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return VenvKernelSpecs()


class RecordingClient(NotebookClient):
    """Also counts, per cell index, the ``update_display_data`` messages the kernel sent.

    nbclient applies each one in place to the earlier output with the same ``display_id``, as a notebook front end
    does, so the executed notebook alone cannot tell a figure redrawn in place from one drawn once.
    """

    def __init__(self, notebook: NotebookNode, **kwargs) -> None:
        super().__init__(notebook, **kwargs)
        self.display_updates: Counter[int] = Counter()

    def process_message(self, msg: dict, cell: NotebookNode, cell_index: int) -> NotebookNode | None:
        if msg["msg_type"] == "update_display_data":
            self.display_updates[cell_index] += 1
        return super().process_message(msg, cell, cell_index)


@dataclass
class Execution:
    notebook: NotebookNode
    workdir: Path
    new_in_notebook_dir: set[Path]
    display_updates: Counter[int]


def execute(name: str, workdir: Path) -> Execution:
    """Runs a copy of the stored notebook in a kernel whose working directory is ``workdir``."""
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    before = set(NOTEBOOK_DIR.rglob("*"))
    client = RecordingClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=VenvKernelManager,
        resources={"metadata": {"path": str(workdir)}},
        extra_arguments=["--InteractiveShell.colors=nocolor"],  # tracebacks without ANSI codes in pytest's report
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, at the first failing cell
    return Execution(notebook, workdir, set(NOTEBOOK_DIR.rglob("*")) - before, client.display_updates)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Execution]:
    """``executed(name)``: the notebook run once for the whole module, whichever test asks first.

    The first test to ask gets the cell error in full; a notebook that failed is not run again for the others.
    """
    runs: dict[str, Execution | Exception] = {}

    def run(name: str) -> Execution:
        if name not in runs:
            try:
                runs[name] = execute(name, tmp_path_factory.mktemp(Path(name).stem))
            except Exception as error:
                runs[name] = error
                raise
        if isinstance(runs[name], Exception):
            pytest.fail(f"{name} failed in an earlier test: {type(runs[name]).__name__}", pytrace=False)
        return runs[name]

    return run


def stream_text(cell: NotebookNode) -> str:
    return "".join(output.text for output in cell.outputs if output.output_type == "stream")


def images(cell: NotebookNode) -> list[NotebookNode]:
    return [output for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def test_every_notebook_in_the_folder_is_tested():
    assert sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == KERNEL_NAME
    assert notebook.metadata.kernelspec.language == "python"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert [(cell.outputs, cell.execution_count) for cell in code_cells] == [([], None)] * len(code_cells)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_the_venv_kernel_and_writes_no_files(name, executed):
    run = executed(name)  # a cell error fails here
    interpreter, cwd = stream_text(run.notebook.cells[-1]).splitlines()
    assert interpreter == sys.executable
    assert Path(cwd) == run.workdir
    # fit(plot=True) writes an image file outside a notebook, never in one; nothing else writes to the cwd either.
    assert sorted(run.workdir.iterdir()) == []
    assert run.new_in_notebook_dir == set()


def test_live_plot_is_one_figure_redrawn_in_place(executed):
    run = executed("01_quickstart.ipynb")
    cells = run.notebook.cells
    [index] = [i for i, cell in enumerate(cells) if cell.cell_type == "code" and "plot=True" in cell.source]
    assert [output.output_type for output in images(cells[index])] == ["display_data"]
    assert run.display_updates[index] >= 1  # drawn, then redrawn in place: not a single picture at the end


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_cell_shows_a_figure_twice(name, executed):
    notebook = executed(name).notebook
    assert [index for index, cell in enumerate(notebook.cells) if len(images(cell)) > 1] == []
