"""
The worker plugin of ``export="worker"``: each worker builds its own export pipeline.

Its own module because the class derives from ``distributed.WorkerPlugin``, so importing
it imports ``distributed``: only :class:`~aiorunner.dask.DaskExecutor` does, when it
registers the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

from .dask_worker import WorkerExport, setup_worker_export, teardown_worker_export

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["ExportPlugin"]


class ExportPlugin(WorkerPlugin):  # type: ignore[misc]
    """Builds the worker's session from a picklable :class:`WorkerExport` at setup and
    flushes and closes it at teardown (worker shutdown or plugin removal), so spans
    recorded on the worker are exported before it goes."""

    def __init__(self, spec: WorkerExport, name: str) -> None:
        self.spec = spec
        self.name = name

    def setup(self, worker: Worker) -> None:
        setup_worker_export(self.spec, self.name)

    async def teardown(self, worker: Worker) -> Any:
        await teardown_worker_export(self.name)
