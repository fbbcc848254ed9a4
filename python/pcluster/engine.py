"""What code running on an engine can ask about its engine: ids and the engines' communicator.

    from pcluster.engine import engine_id, num_engines, engines, host, comm   # comm: mpi4py, engines only

After an engine dies, `comm` is a new communicator over the survivors (its ranks are their
positions in `engines`, no longer the engine ids); a collective that was running on the old one
when the engine died does not return (MPI gives no way to end it). The survivors build it within
milliseconds of agreeing on who is alive; code that asks for `comm` meanwhile waits for it, and
gets a RuntimeError saying why if it cannot be built (another engine died during the build).
"""

engine_id = None
num_engines = None  # engines the job started with
engines = None  # ids of the engines alive (comm's ranks follow this order after a death)
host = None  # this engine's host name (rc.engines[i].host on the client)
_comm_handle = None
_comm = None
_comm_pending = False  # an engine died and the survivors' communicator was not taken yet


def __getattr__(name):
    # mpi4py is imported on first use only: it costs start-up time on every engine.
    global _comm, _comm_handle, _comm_pending, engines
    if name == "comm":
        if _comm_pending:
            import _pcluster_engine

            # Bounded; raises RuntimeError with the reason when it is not built in time.
            _comm_handle, alive = _pcluster_engine.survivors_comm()
            engines, _comm, _comm_pending = list(alive), None, False
        if _comm_handle is None:
            raise RuntimeError("pcluster.engine.comm exists on engines only")
        if _comm is None:
            from mpi4py import MPI

            _comm = MPI.Comm.f2py(_comm_handle)
        return _comm
    raise AttributeError(name)
