"""ipyparallel's ways to call through a view without naming the verb: `@view.remote`,
`pcluster.remote(view)`, `@view.parallel` / `pcluster.parallel(view)`, `view.executor` /
`rc.executor()` (a concurrent.futures.Executor), and `view.wait()`.
All are thin: every call is the view's own apply or map, with its flags, its errors and its
AsyncResults (which are concurrent.futures.Future objects)."""

import concurrent.futures
import contextlib
import functools
import threading


class RemoteFunction:
    """f bound to a view: calling it is view.apply(f, ...) (blocking as `block` says, None: as the
    view's block flag says); .map(*seqs) is view.map(f, *seqs). flags (after=, retries=, ... of a
    load-balanced view) apply to each call."""

    def __init__(self, view, f, block=None, **flags):
        if not callable(f):
            raise TypeError(f"{type(self).__name__} needs a callable, not {type(f).__name__}")
        view._check_flags(flags)
        self.view, self.func, self.block, self.flags = view, f, block, flags
        functools.update_wrapper(self, f)

    def _flags(self):
        return self.view.temp_flags(**self.flags) if self.flags else contextlib.nullcontext()

    def _blocking(self):
        return self.view.block if self.block is None else self.block

    def __call__(self, *args, **kwargs):
        with self._flags():
            call = self.view.apply_sync if self._blocking() else self.view.apply_async
            return call(self.func, *args, **kwargs)

    def map(self, *seqs):
        with self._flags():
            return self.view.map(self.func, *seqs, block=self._blocking())

    def __repr__(self):
        return f"<RemoteFunction {getattr(self.func, '__name__', self.func)!r} on {self.view!r}>"


class ParallelFunction(RemoteFunction):
    """ipyparallel's @view.parallel: f works on whole blocks. pf(*seqs) splits the sequences in
    contiguous blocks (dist='b'), one per engine (fewer when there are fewer items), calls
    f(*blocks) once on each, and joins the results in order: lists and tuples into one list,
    numpy arrays with numpy.concatenate, anything else as a list of the per-block results.
    pf.map(*seqs) is view.map(f, *seqs), element by element. On a load-balanced view each block
    is a task; not blocking, it returns the map's AsyncMapResult (its get() gives the per-block
    results, not joined)."""

    def __init__(self, view, f, dist="b", block=None, **flags):
        if dist != "b":
            raise ValueError("only dist='b' (contiguous blocks) is supported")
        super().__init__(view, f, block, **flags)

    def __call__(self, *seqs):
        if not seqs:
            raise TypeError(f"{getattr(self.func, '__name__', 'the parallel function')} needs at least one sequence")
        with self._flags():
            return self.view._parallel(self.func, seqs, self._blocking())


def parallel(view, dist="b", block=None, **flags):
    """Decorator (ipyparallel's `ipp.parallel(view)`): f called on sequences runs on blocks of
    them, one per engine (see ParallelFunction)."""
    if dist != "b":
        raise ValueError("only dist='b' (contiguous blocks) is supported")

    def decorate(f):
        return ParallelFunction(view, f, dist, block, **flags)

    return decorate


def remote(view, block=None, **flags):
    """Decorator (ipyparallel's `ipp.remote(view)`): the function, called, runs through the view."""

    def decorate(f):
        return RemoteFunction(view, f, block, **flags)

    return decorate


class ViewExecutor(concurrent.futures.Executor):
    """A concurrent.futures.Executor over a view: submit() is view.apply_async (an AsyncResult,
    which is a Future), map() a load-balanced map in chunks (on a direct view: one call per item,
    on every engine of the view). shutdown(wait=True) waits for what this executor submitted."""

    def __init__(self, view):
        self.view = view
        self._lock = threading.Lock()
        self._submitted = []
        self._shut = False

    def _track(self, fut):
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._submitted = [f for f in self._submitted if not f.done()]
            self._submitted.append(fut)
        return fut

    def submit(self, fn, /, *args, **kwargs):
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._track(self.view.apply_async(fn, *args, **kwargs))

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if not hasattr(self.view, "imap"):  # a direct view: the generic one submit per item
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        ar = self._track(self.view.map_async(fn, *iterables, chunksize=chunksize))

        def results():  # as Executor.map: the TimeoutError comes when iterating
            yield from ar.get(-1 if timeout is None else timeout)

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shut = True
            pending = [f for f in self._submitted if not f.done()]
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)


class ViewCalls:
    """What both views have of ipyparallel's call helpers."""

    def wait(self, jobs=None, timeout=-1):
        """Client.wait: for the AsyncResults given, or every request this client has outstanding
        (not only this view's); True if all finished within timeout (-1/None: no limit)."""
        return self.client.wait(jobs, timeout)

    def remote(self, block=None, **flags):
        """Decorator: `@view.remote(block=True)` makes f(...) run as view.apply(f, ...);
        block=None: view.block as it is now, at decoration (as ipyparallel)."""
        return remote(self, self.block if block is None else block, **flags)

    def parallel(self, dist="b", block=None, **flags):
        """Decorator: `@view.parallel()` makes f(seq) run as f(block) on each engine's block of
        seq, the results joined (ParallelFunction); block=None: view.block at decoration."""
        return parallel(self, dist, self.block if block is None else block, **flags)

    # --- the Client's verbs, for this view's engines (ipyparallel has them on views too) ---
    def _view_targets(self, targets):
        return self.targets if targets is None else targets

    def abort(self, jobs=None, targets=None, block=None):
        """Client.abort: drops queued load-balanced tasks (jobs: AsyncResults or ids; default:
        every outstanding one of this client) that no engine has started; returns how many.
        A DirectView aborts its own requests instead (DirectView.abort)."""
        return self.client.abort(jobs)

    def queue_status(self, targets=None, verbose=False):
        """Client.queue_status for this view's engines (or `targets`)."""
        return self.client.queue_status(self._view_targets(targets), verbose)

    def get_result(self, indices_or_msg_ids=None, block=None, owner=True):
        """Client.get_result (results by id, kept by the job)."""
        return self.client.get_result(indices_or_msg_ids, block, owner)

    def purge_results(self, jobs=(), targets=()):
        """Client.purge_results."""
        return self.client.purge_results(jobs, targets)

    def shutdown(self, targets=None, restart=False, hub=False, block=None):
        """Client.shutdown of this view's engines (or `targets`): every engine ends the job;
        some engines need a job with recovery. restart=True is refused: an engine is an MPI rank
        and cannot be started again in a running job."""
        if restart:
            raise ValueError("engines cannot be restarted: they are the job's MPI ranks (start a new job)")
        t = self._view_targets(targets)
        return self.client.shutdown("all" if hub or t is None else t, True if block is None else block)

    def spin(self):
        """Nothing to do: replies are filed by the connection's own thread as they arrive."""

    def use_pickle(self):
        """ipyparallel's use_pickle(): functions defined in __main__ (a script, IPython, a
        notebook) run on the engines with the engine's namespace as their globals, as
        @pcluster.interactive does - a name they use is the engine's value at the call (what
        ipyparallel's default serialization does). For this process and every view, until
        use_cloudpickle(). Data still travels by cloudpickle's pickler."""
        from . import serialize

        serialize.set_main_interactive(True)

    def use_cloudpickle(self):
        """ipyparallel's use_cloudpickle() (pcluster's default): functions defined in __main__
        travel by value with the values of the globals they name, as the client had them at the
        send (docs/architecture.md, "Serialization")."""
        from . import serialize

        serialize.set_main_interactive(False)

    def use_dill(self):
        """ipyparallel's use_dill(): pcluster's pickler already sends what dill is used for
        (closures, lambdas, interactively defined functions and classes) by value; this is
        use_cloudpickle()."""
        self.use_cloudpickle()

    @property
    def executor(self):
        """A concurrent.futures.Executor submitting to this view."""
        return ViewExecutor(self)
