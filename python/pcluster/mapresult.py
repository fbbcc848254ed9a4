"""AsyncMapResult: a load-balanced map's result, one task per chunk, as one Future."""

import concurrent.futures
import threading
import time

from .asyncresult import AsyncResult, _timeout_arg
from .error import CompositeError, RemoteError


class AsyncMapResult(AsyncResult):
    """Result of a load-balanced map: one task per chunk. A Future of the whole list; iterating
    yields values as chunks finish (in order, or as they come with ordered=False)."""

    _progress_unit = "chunk"  # one _targets slot per chunk: progress counts finished chunks

    def __init__(self, client, children, ordered=True, return_exceptions=False):
        concurrent.futures.Future.__init__(self)
        self._client = client
        self._children = list(children)
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._method = "map"
        self._single = False
        self._flat = True
        self._post = None
        self._targets = [None] * len(self._children)
        self.msg_id = self._children[0].msg_id if self._children else None
        self._left = len(self._children)
        self._lock = threading.Lock()
        if not self._children:
            self.set_result([])
        for c in self._children:
            c.add_done_callback(self._child_done)

    def __repr__(self):
        return f"<AsyncMapResult: {self.progress}/{len(self._children)} chunks done>"

    @property
    def msg_ids(self):
        return [c.msg_id for c in self._children]

    def _child_done(self, _):
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if not last:
            return
        errors = [c.exception(0) for c in self._children if c.exception(0) is not None]
        try:
            if errors:
                # Engine errors combine into one CompositeError; an error that is not one (the
                # job ended, a result that could not be received) is the map's error as it is.
                other = [e for e in errors if not isinstance(e, RemoteError)]
                if len(errors) == 1 or other:
                    self.set_exception(other[0] if other else errors[0])
                else:
                    flat = []
                    for e in errors:
                        flat.extend(e.elist if isinstance(e, CompositeError) else [e])
                    self.set_exception(CompositeError(f"{len(errors)} of {len(self._children)} map chunks failed", flat))
            else:
                out = []
                for c in self._children:
                    out.extend(c.result(0))
                self.set_result(out)
        except concurrent.futures.InvalidStateError:
            pass

    def _collect(self, timeout):
        if self.done():
            return True
        t = _timeout_arg(timeout)
        deadline = None if t is None else time.monotonic() + t
        for c in self._children:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not c._collect(left):
                return False
        # Children are done; the last one's callback (on the result thread) settles us.
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        concurrent.futures.wait([self], timeout=left)
        return self.done()

    @property
    def engine_id(self):
        """Per chunk, the engine it ran on (None while it has not)."""
        return [c.engine_id for c in self._children]

    def _blocking_wait(self, timeout):
        return AsyncResult._blocking_wait(self, timeout)

    @property
    def progress(self):
        return sum(c.done() for c in self._children)

    def __iter__(self):
        if self._ordered:
            for c in self._children:
                yield from c.get()
        else:
            for c in concurrent.futures.as_completed(self._children):
                yield from c.get()

    def __len__(self):
        return len(self._children)

    def interrupt(self):
        """Interrupt the chunks running now (see AsyncResult.interrupt); returns the engines told."""
        running = [c.msg_id for c in self._children if not c.done()]
        if not running:
            return []
        from . import _core

        rep = self._client._control(_core.control_action.interrupt, running, [])
        return sorted({q.engine for q in rep.engines})

    def abort(self):
        """Drops the chunks not yet sent to an engine (they fail with TaskAborted); returns the
        number aborted. Chunks already running finish."""
        pending = [c for c in self._children if not c.done()]
        return self._client._abort([c.msg_id for c in pending]) if pending else 0

    def _per_engine(self, k):
        return [c._per_engine(k) for c in self._children]

    @property
    def metadata(self):
        return [c.metadata for c in self._children]

    def _rich_per(self, key, empty):  # outputs, data: per chunk
        return [c._rich_per(key, empty) for c in self._children]

    @property
    def elapsed(self):
        if not self._children:
            return 0.0
        start = min(c._submitted for c in self._children)
        if self.done():
            return max((c._received or time.time()) for c in self._children) - start
        return time.time() - start

    def get_dict(self, timeout=-1):
        raise ValueError("a map result is not one value per engine")
