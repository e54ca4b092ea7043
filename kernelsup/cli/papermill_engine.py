"""papermill's engine ``kernelsup``: ``papermill --engine kernelsup in.ipynb out.ipynb``.

Registered under the entry point group ``papermill.engine`` (pyproject.toml), which only
papermill reads, so an install without papermill never imports this module. papermill
does what it always does (parameters, its metadata, the output file, its error cell and
exit status); this engine runs the cells, through kernelsup's run of a notebook
(kernelsup/notebook/runner.py): one fresh kernel of the supervisor that serves the config
(``KERNELSUP_CONFIG``, default ``./supervisor.toml``; the engine keyword ``config`` from
papermill's Python API), else an embedded one for the run, as ``kernelsup nb run``
chooses. Each cell goes through papermill's ``cell_start``, ``cell_exception`` and
``cell_complete``, so papermill writes the output notebook after every cell. A cell past
``--execution-timeout`` is interrupted, a kernel death is shown in its cell; both are
error outputs (``CellTimeoutError``, ``DeadKernelError``), so papermill reports them as
it reports an exception.

Imported by papermill while papermill itself is being imported (papermill.engines loads
its entry points as its last step), so this module imports nothing of papermill's at the
top: subclassing ``papermill.engines.Engine`` here would make importing this module first
(``from kernelsup.cli.papermill_engine import KernelsupEngine``) load papermill.engines,
which would load this half-made module through the entry point. The class has papermill's
engine interface (``execute_notebook``, ``execute_managed_notebook``, ``nb_kernel_name``,
``nb_language``) and takes ``Engine``'s own code for the parts that are not ours.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernelsup.core.config import Config

CONFIG_ENV = "KERNELSUP_CONFIG"


def _engine() -> Any:
    from papermill.engines import Engine  # type: ignore[import-untyped]

    return Engine


class KernelsupEngine:
    """Runs a papermill notebook under kernelsup's supervision."""

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: str | None, **kwargs: Any) -> Any:
        """papermill's ``Engine.execute_notebook`` (its execution manager, its metadata,
        its saves) calling this class's :meth:`execute_managed_notebook`."""
        return _engine().execute_notebook.__func__(cls, nb, kernel_name, **kwargs)

    @classmethod
    def nb_kernel_name(cls, nb: Any, name: str | None = None) -> Any:
        return _engine().nb_kernel_name(nb, name)

    @classmethod
    def nb_language(cls, nb: Any, language: str | None = None) -> Any:
        return _engine().nb_language(nb, language)

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str | None,
        log_output: bool = False,
        execution_timeout: float | None = None,
        config: str | None = None,
        pool: str | None = None,
        **kwargs: Any,
    ) -> Any:
        import trio

        from kernelsup.cli.nb_command import DEFAULT_CONFIG
        from kernelsup.core.config import load_config

        config = config or os.environ.get(CONFIG_ENV)
        path = config or DEFAULT_CONFIG
        cfg = load_config(path) if config is not None or os.path.exists(path) else None
        run = functools.partial(
            _execute,
            nb_man,
            kernel_name,
            log_output=log_output,
            cell_timeout=float(execution_timeout) if execution_timeout else None,
            config=cfg,
            pool=pool,
        )
        return trio.run(run)


async def _execute(
    nb_man: Any,
    kernel_name: str | None,
    *,
    log_output: bool,
    cell_timeout: float | None,
    config: Config | None,
    pool: str | None,
) -> Any:
    from kernelsup.cli.nb_command import open_target
    from kernelsup.notebook.runner import run_notebook

    def started(cell: Any, index: int) -> None:
        nb_man.cell_start(cell, index)

    def ended(cell: Any, index: int) -> None:
        if cell.metadata.get("kernelsup", {}).get("status") not in ("ok", "skipped"):
            nb_man.cell_exception(cell, index)
        if log_output:
            _log(cell)
        nb_man.cell_complete(cell, index)

    kernels = [kernel_name] if kernel_name else []
    async with open_target(config, kernels=kernels, jobs=1) as (target, _where):
        report = await run_notebook(
            target,
            nb_man.nb,
            prepare=False,  # papermill has injected the parameters and cleared the outputs
            kernel=None if pool else kernel_name,
            pool=pool,
            cell_timeout=cell_timeout,
            on_cell_start=started,
            on_cell_end=ended,
        )
    if report.status == "rejected" and report.cells_run == 0:  # no pool for the kernel...
        from papermill.exceptions import PapermillException  # type: ignore[import-untyped]

        raise PapermillException(f"kernelsup: {report.message}")
    return nb_man.nb


def _log(cell: Any) -> None:
    """papermill's --log-output: the cell's streams, on this process's streams."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            stream = sys.stderr if out.get("name") == "stderr" else sys.stdout
            stream.write(str(out.get("text", "")))
            stream.flush()


__all__ = ["CONFIG_ENV", "KernelsupEngine"]
