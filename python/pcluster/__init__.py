"""pcluster: interactive parallel Python over MPI, with ipyparallel's client API."""

from .asyncresult import AsyncResult
from .client import Client, default_connection_file
from .error import (
    AuthenticationError,
    CompositeError,
    DependencyError,
    EngineError,
    JobEndedError,
    NoJobError,
    PclusterError,
    RemoteError,
    ResultUnavailable,
    TaskError,
)
from .error import _KIND_CLASSES as _kinds
from .hub import AsyncHubResult
from .lbview import Dependency, LoadBalancedView
from .mapresult import AsyncMapResult
from .references import Reference, depend, require
from .remotefunction import ParallelFunction, RemoteFunction, ViewExecutor, parallel, remote
from .serialize import interactive
from .view import DirectView
from . import slurm, tunnel  # noqa: F401  (pcluster.slurm.submit(...), ssh tunnels)

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """%load_ext pcluster: %px and friends, on every engine of the newest Client."""
    from . import magics

    magics.load(ipython)

# Every error kind's exception class (TaskAborted, EngineDied, ...), from the error table.
globals().update({cls.__name__: cls for cls in _kinds.values()})

__all__ = [cls.__name__ for cls in _kinds.values()] + [
    "EngineError",
    "AsyncMapResult",
    "AsyncResult",
    "AsyncHubResult",
    "ResultUnavailable",
    "Dependency",
    "DependencyError",
    "LoadBalancedView",
    "TaskError",
    "AuthenticationError",
    "Client",
    "CompositeError",
    "DirectView",
    "JobEndedError",
    "NoJobError",
    "PclusterError",
    "RemoteError",
    "default_connection_file",
    "interactive",
    "parallel",
    "ParallelFunction",
    "Reference",
    "remote",
    "RemoteFunction",
    "depend",
    "require",
    "ViewExecutor",
]
