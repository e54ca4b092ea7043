"""Layer 3.5, notebooks under supervision: run an .ipynb's cells in one kernel, outputs
written back.

The layer between the tree and the root (``api.py``); it imports only :mod:`kernelsup.core`
(a contract in pyproject.toml holds it to that) and uses only the interface every
supervisor offers (``status``, ``execute``, ``close_session``), so ``Supervisor``,
``Client`` and ``SyncClient`` each get ``run_notebook`` as a thin call into
:func:`run_notebook` / :func:`run_notebook_sync`. document.py is the notebook file
(nbformat), parameters.py papermill's parameter cells, runner.py the run, report.py its
outcome.
"""

from kernelsup.notebook.report import CellReport, NotebookReport, format_table
from kernelsup.notebook.runner import NotebookRun, choose_pool, run_notebook, run_notebook_sync

__all__ = [
    "CellReport",
    "NotebookReport",
    "NotebookRun",
    "choose_pool",
    "format_table",
    "run_notebook",
    "run_notebook_sync",
]
