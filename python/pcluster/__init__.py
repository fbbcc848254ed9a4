"""pcluster: interactive parallel Python over MPI, with ipyparallel's client API."""

from .asyncresult import AsyncResult
from .client import Client, default_connection_file
from .error import (
    AuthenticationError,
    CompositeError,
    DependencyError,
    JobEndedError,
    NoJobError,
    PclusterError,
    RemoteError,
    TaskAborted,
    TaskError,
    TaskTimeout,
)
from .lbview import AsyncMapResult, LoadBalancedView
from .view import DirectView

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """%load_ext pcluster: %px and friends, on every engine of the newest Client."""
    from . import magics

    magics.load(ipython)

__all__ = [
    "AsyncMapResult",
    "AsyncResult",
    "DependencyError",
    "LoadBalancedView",
    "TaskAborted",
    "TaskError",
    "TaskTimeout",
    "AuthenticationError",
    "Client",
    "CompositeError",
    "DirectView",
    "JobEndedError",
    "NoJobError",
    "PclusterError",
    "RemoteError",
    "default_connection_file",
]
