"""
Run ``run_many`` jobs on a Dask distributed cluster: ``from aiorunner.dask import
DaskExecutor``.

Needs ``pip install 'aiorunner[dask]'`` (the ``distributed`` package), imported only when
a :class:`DaskExecutor` is made. See the README section "Beyond one machine".
"""

from __future__ import annotations

from ._orchestrate.dask import ClusterError, DaskExecutor
from ._orchestrate.dask_worker import WorkerExport

__all__ = ["ClusterError", "DaskExecutor", "WorkerExport"]

for _value in (ClusterError, DaskExecutor, WorkerExport):
    _value.__module__ = __name__
del _value
