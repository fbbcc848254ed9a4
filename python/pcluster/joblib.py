"""joblib on the engines: ``view.register_joblib_backend()`` makes a load-balanced view a joblib
parallel backend, so ::

    from joblib import Parallel, delayed, parallel_backend
    rc.load_balanced_view().register_joblib_backend()
    with parallel_backend("pcluster"):
        Parallel()(delayed(f)(i) for i in range(100))

runs each of joblib's batches as one load-balanced task. joblib is imported only here, when a
backend is registered (python3-joblib).

Contract with joblib (ParallelBackendBase, joblib >= 0.12): ``apply_async(batch, callback)``
sends the batch (a picklable callable returning the batch's results) and returns our
AsyncResult, whose ``get()`` joblib calls to collect it (a failed batch raises the engine's
error, a RemoteError, and joblib stops dispatching); ``callback(results)`` runs when a batch
succeeds (on the client's result thread) and lets joblib dispatch the next ones. ``n_jobs=-1``
or ``None`` means every engine of the view.
"""

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend

__all__ = ["PclusterBackend", "register"]


class PclusterBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib backend that runs batches as tasks of a LoadBalancedView. joblib sizes the
    batches itself (AutoBatchingMixin: short calls are grouped until a batch takes a fraction of
    a second), so a task's round trip is not paid per call."""

    supports_timeout = True

    def __init__(self, view, **kwargs):
        super().__init__(**kwargs)
        self._view = view
        self._sent = []  # AsyncResults of batches not known to be done: abort_everything drops them

    def effective_n_jobs(self, n_jobs):
        engines = len(self._view)
        if n_jobs is None or n_jobs == -1:
            return engines
        if n_jobs < 0:  # joblib's convention: -2 is all but one, ...
            return max(1, engines + 1 + n_jobs)
        return min(n_jobs, engines) if n_jobs else 1

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_args):
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def apply_async(self, func, callback=None):
        ar = self._view.apply_async(func)
        self._sent = [a for a in self._sent if not a.done()]
        self._sent.append(ar)
        if callback is not None:

            def done(f):
                if not f.cancelled() and f.exception() is None:
                    callback(f.result())

            ar.add_done_callback(done)
        return ar

    def abort_everything(self, ensure_ready=True):
        """joblib gives up (a batch failed, or the caller interrupted): batches not yet sent to an
        engine are dropped; those running finish there and are ignored."""
        pending = [a for a in self._sent if not a.done()]
        self._sent = []
        if pending:
            self._view.client.abort(pending)


def register(view, name="pcluster", make_default=False):
    """Registers `view` (a LoadBalancedView) as joblib's backend `name`; with the default name
    also as "ipyparallel" unless ipyparallel registered that name itself, so ipyparallel code
    runs unchanged."""
    def factory(**kw):
        return PclusterBackend(view, **kw)

    factory.pcluster = True
    register_parallel_backend(name, factory, make_default=make_default)
    if name == "pcluster":
        from joblib.parallel import BACKENDS

        # Replaces an alias of ours (an earlier view's), never ipyparallel's own backend.
        if getattr(BACKENDS.get("ipyparallel"), "pcluster", True):
            BACKENDS["ipyparallel"] = factory
