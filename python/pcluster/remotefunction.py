"""ipyparallel's ways to call through a view without naming the verb: `@view.remote`,
`pcluster.remote(view)`, `view.executor` / `rc.executor()` (a concurrent.futures.Executor), and
`view.wait()`.
Both are thin: every call is the view's own apply or map, with its flags, its errors and its
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
        if flags and not hasattr(view, "temp_flags"):
            raise TypeError(f"{type(view).__name__} takes no flags ({', '.join(flags)}): only a load-balanced view has them")
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
        """Decorator: `@view.remote(block=True)` makes f(...) run as view.apply(f, ...)."""
        return remote(self, block, **flags)

    @property
    def executor(self):
        """A concurrent.futures.Executor submitting to this view."""
        return ViewExecutor(self)
