"""LoadBalancedView: tasks the controller's scheduler sends to whichever engine is free.

    lv = rc.load_balanced_view()                  # all engines; load_balanced_view(targets=[...])
    ar = lv.apply(f, x)                           # AsyncResult (lv.block is False by default)
    lv.map(f, range(100_000), chunksize=1000)     # ordered; ordered=False yields as chunks finish
    for r in lv.imap(f, big_iterable): ...        # lazy, a bounded number of tasks in flight
    lv.apply_async(g, after=[ar1], follow=[ar2], retries=2, timeout=30)
    ar.abort()                                    # queued tasks are dropped: TaskAborted
    rc.queue_status()

Scheduling (least load, a small prefetch window per engine, dependencies, retries, timeouts,
abort) happens in the C++ controller; see mpi_controller/scheduler.hpp.
"""

import concurrent.futures
import contextlib
import itertools
import math
import numbers

from . import _core, serialize
from .remotefunction import ViewCalls
from .asyncresult import AsyncResult
from .mapresult import AsyncMapResult
from .view import _blocks, _concat, _indexable

_CALL, _MAP_CHUNK = _core.task_kind.call, _core.task_kind.map_chunk
_PLAIN_TASK = {k: _core.task_request(kind=k) for k in (_CALL, _MAP_CHUNK)}
_FLAGS = ("after", "follow", "retries", "timeout", "targets")


def _task_ids(deps):
    """Ids of the tasks behind dependencies: AsyncResults, AsyncMapResults, ids (ints, or their
    strings as ipyparallel's msg_ids are), or lists."""
    if deps is None:
        return []
    if isinstance(deps, (AsyncResult, AsyncMapResult, numbers.Integral, str)):
        deps = [deps]
    ids = []
    for d in deps:
        if isinstance(d, AsyncMapResult):
            ids.extend(d.msg_ids)
        elif isinstance(d, AsyncResult):
            if not getattr(d, "_is_task", False):
                raise TypeError(
                    "after=/follow= name load-balanced tasks; a DirectView result is not one "
                    "(wait for it first: ar.wait())"
                )
            ids.append(d.msg_id)
        elif isinstance(d, numbers.Integral):
            ids.append(int(d))
        elif isinstance(d, str):
            if not d.strip().isdigit():
                raise ValueError(f"not a task id: {d!r} (pcluster's msg_ids are whole numbers: ar.msg_id)")
            ids.append(int(d))
        elif isinstance(d, (list, tuple, set)):
            ids.extend(_task_ids(list(d)))
        else:
            raise TypeError(f"a dependency is an AsyncResult or a task id, not {type(d).__name__}")
    return ids


def _dependency_mode(deps, flag):
    """Whether a failed dependency still counts as met (after=Dependency(..., failure=True)).
    The scheduler waits for all dependencies, met by success (or, for after=, by either outcome):
    the other kinds of ipyparallel's Dependency are refused here, naming what works."""
    if not isinstance(deps, Dependency):
        return False
    if not deps.all:
        raise ValueError(f"{flag}=Dependency(..., all=False) (any one of them) is not supported: a task waits for "
                         f"all of its dependencies; split the work, or wait for the first with rc.wait(...) first")
    if not deps.success:
        raise ValueError(f"{flag}=Dependency(..., success=False) (met only by failure) is not supported; "
                         f"after=Dependency(ids, failure=True) runs once they finished either way")
    if deps.failure and flag == "follow":
        raise ValueError("follow=Dependency(..., failure=True) is not supported: follow needs the task's "
                         "engine, which a failed dependency may have lost; use after=")
    return bool(deps.failure)


class Dependency(set):
    """ipyparallel's Dependency: a set of task ids (AsyncResults, ids) for after=/follow=, with
    all= (wait for all; False is refused), success= and failure= (whether a dependency that
    finished with that outcome counts as met: after=Dependency(ids, failure=True) runs once they
    all finished, whatever their outcome)."""

    def __init__(self, dependencies=(), all=True, success=True, failure=False):
        super().__init__(_task_ids(list(dependencies) if isinstance(dependencies, (set, frozenset)) else dependencies))
        self.all = all
        self.success = success
        self.failure = failure

    def __repr__(self):
        return f"Dependency({sorted(self)}, all={self.all}, success={self.success}, failure={self.failure})"


class LoadBalancedView(ViewCalls):
    """Tasks go to free engines; methods take block= (default: view.block, which starts as the
    client's block, False)."""

    def __init__(self, client, targets=None):
        self.client = client
        self.targets = None if targets is None else client._resolve(targets)
        self.block = client.block
        self.after = None
        self.follow = None
        self.retries = 0
        self.timeout = None
        self.history = []  # msg_ids of the tasks sent through this view (a map: one per chunk)

    def __repr__(self):
        return f"<LoadBalancedView {self.targets if self.targets is not None else 'all'}>"

    def __len__(self):
        return len(self.targets) if self.targets is not None else len(self.client)

    def register_joblib_backend(self, name="pcluster", make_default=False):
        """Makes this view joblib's parallel backend `name` (also "ipyparallel", unless taken):
        ``with joblib.parallel_backend("pcluster"): Parallel()(delayed(f)(x) for x in xs)`` runs
        joblib's batches as tasks here. Needs joblib (python3-joblib)."""
        from .joblib import register

        register(self, name, make_default)

    # --- flags, as in ipyparallel ---
    def _check_flags(self, flags):
        for k in flags:
            if k not in _FLAGS + ("block",):
                raise KeyError(f"no flag {k!r}: flags are {', '.join(_FLAGS + ('block',))}")

    def set_flags(self, **flags):
        """after=, follow=, retries=, timeout=, targets=, block= for the following calls."""
        self._check_flags(flags)
        for k, v in flags.items():
            if k == "targets":
                v = None if v is None else self.client._resolve(v)
            setattr(self, k, v)

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        saved = {k: getattr(self, k) for k in flags}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            for k, v in saved.items():
                setattr(self, k, v)

    # --- submission ---
    def _task(self, kind, bufs, method, after, follow, retries, timeout, return_exceptions=False):
        r = self.retries if retries is None else retries
        if not isinstance(r, numbers.Integral) or r < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {r!r}")
        t = self.timeout if timeout is None else timeout
        after = self.after if after is None else after
        follow = self.follow if follow is None else follow
        failure_ok = _dependency_mode(after, "after")
        _dependency_mode(follow, "follow")
        after = self._checked_deps(after)
        follow = self._checked_deps(follow)
        timeout = 0.0 if t is None or t < 0 else float(t)
        if not (after or follow or r or timeout or return_exceptions):
            msg = _PLAIN_TASK[kind]  # sent as a copy: one prebuilt message serves every plain task
        else:
            msg = _core.task_request(kind=kind, after=after, follow=follow, retries=int(r), timeout=timeout,
                                     return_exceptions=return_exceptions, after_failure_ok=failure_ok)
        ar = self.client._submit_task(msg, bufs, self.targets, method)
        self.history.append(ar.msg_id)
        return ar

    def _checked_deps(self, deps):
        """Task ids of deps; an id that no task can have (client number 0, or one of ours not
        issued yet) is refused here. The controller checks the rest (DependencyError)."""
        ids = _task_ids(deps)
        mine = self.client._client_no
        issued = self.client._issued
        for i in ids:
            client = _core.client_of(i)
            if client == 0 or (client == mine and _core.seq_of(i) > issued):
                raise ValueError(
                    f"unknown task id {i} in after=/follow=: pass AsyncResults (or their msg_id) of "
                    f"tasks already submitted"
                )
        return ids

    def apply(self, f, /, *args, after=None, follow=None, retries=None, timeout=None, block=None, **kwargs):
        """f(*args, **kwargs) on whichever engine is free. after/follow/retries/timeout/block
        override the view's flags for this call; every other keyword argument (f, args, targets
        included) goes to f (a function that needs a keyword argument named like a flag takes it
        through functools.partial or lv.temp_flags)."""
        return self._apply(f, args, kwargs, block, after, follow, retries, timeout)

    def apply_async(self, f, /, *args, after=None, follow=None, retries=None, timeout=None, **kwargs):
        """apply, not blocking: a keyword argument named block goes to f."""
        return self._apply(f, args, kwargs, False, after, follow, retries, timeout)

    def apply_sync(self, f, /, *args, after=None, follow=None, retries=None, timeout=None, **kwargs):
        """apply, blocking: a keyword argument named block goes to f."""
        return self._apply(f, args, kwargs, True, after, follow, retries, timeout)

    def _apply(self, f, args, kwargs, block, after, follow, retries, timeout):
        if not callable(f):
            raise TypeError(f"apply needs a callable, not {type(f).__name__}")
        bufs = serialize.pack_call(f, args, kwargs)
        ar = self._task(_CALL, bufs, "apply", after, follow, retries, timeout)
        return ar.get() if (self.block if block is None else block) else ar

    def _default_chunksize(self, n):
        # A few chunks per engine: load balance without a task per item.
        return max(1, math.ceil(n / (4 * len(self))))

    def _parallel(self, f, seqs, block):
        """ParallelFunction's call: one task per block (as many blocks as the view's engines)."""
        split = _blocks(seqs, len(self))
        if not split[0]:
            return []
        ar = self.map(f, *split, chunksize=1, block=False)
        block = self.block if block is None else block
        return _concat(ar.get()) if block else ar

    def map(self, f, *seqs, chunksize=None, ordered=True, return_exceptions=False, block=None, **flags):
        """[f(*xs) for xs in zip(*seqs)] in chunks of `chunksize` items, each chunk a task.
        chunksize=None: about four chunks per engine. ordered=False: iteration yields results as
        chunks finish. return_exceptions=True: an item that raises gives its RemoteError in its
        place instead of failing the map."""
        if not seqs:
            raise TypeError("map needs at least one sequence")
        if not callable(f):
            raise TypeError(f"map needs a callable, not {type(f).__name__}")
        unknown = set(flags) - {"after", "follow", "retries", "timeout"}
        if unknown:
            raise TypeError(
                f"map got unknown keyword(s) {', '.join(sorted(unknown))}: it takes chunksize, ordered, "
                f"return_exceptions, block, after, follow, retries, timeout"
            )
        seqs = [_indexable(s) for s in seqs]
        n = min(len(s) for s in seqs)
        cs = self._default_chunksize(n) if chunksize is None else chunksize
        if not isinstance(cs, numbers.Integral) or cs < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, not {cs!r}")
        fbytes = serialize.checked_dumps_function(f)
        children = []
        single = len(seqs) == 1
        for lo in range(0, n, cs):
            # One sequence: its slice travels as it is (a range stays a range, an array slice
            # goes without copies) and the engine calls f(x); several: argument tuples.
            items = seqs[0][lo : lo + cs] if single else list(zip(*(s[lo : lo + cs] for s in seqs)))
            children.append(self._chunk(fbytes, items, single, return_exceptions, flags))
        amr = AsyncMapResult(self.client, children, ordered, return_exceptions)
        return amr.get() if (self.block if block is None else block) else amr

    def map_async(self, f, *seqs, **kwargs):
        return self.map(f, *seqs, block=False, **kwargs)

    def map_sync(self, f, *seqs, **kwargs):
        return self.map(f, *seqs, block=True, **kwargs)

    def _chunk(self, fbytes, items, single, return_exceptions, flags):
        bufs = serialize.pack_chunk(fbytes, items, single)
        return self._task(
            _MAP_CHUNK,
            bufs,
            "map",
            flags.get("after"),
            flags.get("follow"),
            flags.get("retries"),
            flags.get("timeout"),
            return_exceptions,
        )

    def imap(self, f, *iterables, chunksize=1, ordered=True, max_outstanding="auto", return_exceptions=False):
        """Lazy map: reads the iterables as results are consumed, with at most max_outstanding
        chunks in flight (auto: two per engine beyond the engines' prefetch), and yields results
        in order (ordered=False: as chunks finish)."""
        if not iterables:
            raise TypeError("imap needs at least one iterable")
        if max_outstanding == "auto":
            max_outstanding = 4 * len(self)
        if not isinstance(chunksize, numbers.Integral) or chunksize < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, not {chunksize!r}")
        fbytes = serialize.checked_dumps_function(f)
        single = len(iterables) == 1
        items = iter(iterables[0]) if single else zip(*iterables)
        return _imap(self, fbytes, items, single, chunksize, ordered, max(1, int(max_outstanding)), return_exceptions)


def _imap(lv, fbytes, items, single, chunksize, ordered, max_outstanding, return_exceptions):
    inflight = []  # chunk AsyncResults, in submission order
    exhausted = False

    def fill():
        nonlocal exhausted
        while not exhausted and len(inflight) < max_outstanding:
            chunk = list(itertools.islice(items, chunksize))
            if not chunk:
                exhausted = True
                break
            inflight.append(lv._chunk(fbytes, chunk, single, return_exceptions, {}))

    fill()
    try:
        while inflight:
            if ordered:
                ar = inflight.pop(0)
            else:
                done, _ = concurrent.futures.wait(inflight, return_when=concurrent.futures.FIRST_COMPLETED)
                ar = next(a for a in inflight if a in done)
                inflight.remove(ar)
            values = ar.get()
            fill()
            yield from values
    finally:
        left = [ar.msg_id for ar in inflight if not ar.done()]
        if left:  # the consumer stopped early: drop what has not started
            try:
                lv.client._abort(left)
            except Exception:  # the job may be gone; nothing then runs them anyway
                pass
