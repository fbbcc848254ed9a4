"""AsyncResult: the pending result of a request, a concurrent.futures.Future."""

import concurrent.futures
import threading
import time

from . import serialize
from .error import CompositeError, JobEndedError, RemoteError


def _timeout_arg(timeout):
    # ipyparallel habit: timeout=-1 means "no limit", like None.
    return None if timeout is None or timeout < 0 else timeout


class AsyncResult(concurrent.futures.Future):
    """Result of a request to one or more engines.

    Replies arrive on the client's connection thread; get()/wait()/ready() collect them. For a
    request to one engine (rc[0]) the result is that engine's value, otherwise a list in target
    order. Remote exceptions are raised as RemoteError (one engine) or CompositeError.
    """

    def __init__(self, client, msg_id, targets, method, single=False, post=None):
        super().__init__()
        self._client = client
        self.msg_id = msg_id
        self._targets = list(targets)
        self._method = method
        self._single = single
        self._post = post
        self._metadata = []
        self._fetch_lock = threading.Lock()

    def __repr__(self):
        state = "finished" if self.done() else "pending"
        return f"<AsyncResult({self._method}): {state}>"

    # --- collecting replies ---
    def _fetch(self, timeout):
        """Collects the replies, waiting up to timeout (None: no limit); True once done. One
        thread at a time takes the replies off the connection; others wait for it to finish."""
        t = _timeout_arg(timeout)
        deadline = None if t is None else time.monotonic() + t
        while not self.done():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._fetch_lock.acquire(blocking=False):
                try:
                    self._fetch_locked(left)
                finally:
                    self._fetch_lock.release()
                return self.done()
            if left == 0:
                return False
            concurrent.futures.wait([self], timeout=0.1 if left is None else min(0.1, left))
        return True

    def _fetch_locked(self, timeout):
        if self.done():
            return
        conn = self._client._conn
        if conn.wait(self.msg_id, len(self._targets), timeout):
            self._resolve(conn.take(self.msg_id))
            conn.release(self.msg_id)
        elif conn.closed:
            self.set_exception(JobEndedError(conn.close_reason))
        if self.done():
            self._client._outstanding.discard(self)

    def _resolve(self, replies):
        refused = [r for r in replies if r.engine < 0]
        if refused:
            r = refused[0]
            self.set_exception(RemoteError(r.ename, r.evalue, "", {"engine_id": "controller", "method": self._method}))
            return
        by_engine = {r.engine: r for r in replies}
        ordered = [by_engine[t] for t in self._targets]
        self._metadata = [
            {"engine_id": r.engine, "started": r.started, "completed": r.completed, "status": "ok" if r.ok else "error"}
            for r in ordered
        ]
        errors = [
            RemoteError(r.ename, r.evalue, "".join(r.traceback), {"engine_id": r.engine, "method": self._method})
            for r in ordered
            if not r.ok
        ]
        if errors:
            if self._single:
                self.set_exception(errors[0])
            else:
                n = len(ordered)
                msg = f"one or more exceptions raised in {self._method} on {len(errors)} of {n} engine(s)"
                self.set_exception(CompositeError(msg, errors))
            return
        try:
            values = [serialize.loads(r.buffers()) for r in ordered]
            if self._post is not None:
                values = self._post(values)
            elif self._single:
                values = values[0]
        except BaseException as e:  # a result that cannot be unpickled here is this request's error
            self.set_exception(e)
            return
        self.set_result(values)

    # --- ipyparallel's AsyncResult interface ---
    def ready(self):
        """Whether every reply is in (never blocks)."""
        return self._fetch(0)

    def wait(self, timeout=-1):
        """Wait up to timeout seconds (-1/None: no limit); returns ready()."""
        return self._fetch(timeout)

    def get(self, timeout=-1):
        """The result; raises TimeoutError if it is not ready within timeout seconds."""
        if not self._fetch(timeout):
            raise TimeoutError(f"result of {self._method} not ready after {timeout} s (the work goes on; call get() again)")
        return super().result(0)

    def result(self, timeout=None):
        return self.get(timeout)

    def exception(self, timeout=None):
        if not self._fetch(timeout):
            raise TimeoutError(f"result of {self._method} not ready after {timeout} s")
        return super().exception(0)

    @property
    def r(self):
        """The result, waiting as long as it takes (the 2008 PendingResult's .r)."""
        return self.get()

    def successful(self):
        """Whether the request finished without error; RuntimeError if it is not finished."""
        if not self.ready():
            raise RuntimeError(f"{self._method} has not finished yet")
        return super().exception(0) is None

    def get_dict(self, timeout=-1):
        """{engine_id: result} for a multi-engine request."""
        res = self.get(timeout)
        if self._single:
            res = [res]
        if len(res) != len(self._targets):
            raise ValueError("this result is not one value per engine")
        return dict(zip(self._targets, res))

    @property
    def metadata(self):
        self.ready()
        return self._metadata

    @property
    def engine_id(self):
        return self._targets[0] if self._single else list(self._targets)

    def __len__(self):
        return len(self._targets)
