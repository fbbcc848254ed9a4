"""AsyncResult: the pending result of a request, a concurrent.futures.Future.

One I/O path serves blocking calls, non-blocking calls and ``await``. The connection's reader
thread (C++, no GIL) files replies; a request nobody is blocked on is resolved by the client's
result thread as soon as its last reply is in, so callbacks run, ``concurrent.futures.wait``
returns and ``await`` wakes without polling. A thread blocked in get() takes its own replies
straight from the reader (one wake-up), which is also why blocking is safe inside a running
asyncio loop or a GUI main thread: nothing it waits for runs on the thread it blocks.
"""

import asyncio
import concurrent.futures
import contextlib
import threading
import time

from . import _core, _progress, serialize
from .error import CompositeError, JobEndedError, from_reply

# Replies that answer a whole request rather than one target: a refusal by the controller or
# bridge, or one this client could not receive.
_WHOLE_REQUEST = (_core.reply_origin.refused, _core.reply_origin.client)

# Blocking waits on several engines show a progress bar once they take this long (interactive
# sessions only).
PROGRESS_AFTER = 2.0

# Guards every result's output record (rarely contended: output is small and infrequent next to
# results, and one lock saves one per request).
_out_lock = threading.Lock()


_PENDING = concurrent.futures._base.PENDING
# Whether Future.__init__ sets exactly these fields (CPython 3.8 to 3.13 do), so AsyncResult may
# set them itself.
_LEAN_INIT = set(vars(concurrent.futures.Future())) == {
    "_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"
}


def _timeout_arg(timeout):
    # ipyparallel habit: timeout=-1 means "no limit", like None.
    return None if timeout is None or timeout < 0 else timeout


def _flatten(parts):
    out = []
    for p in parts:
        out.extend(p)
    return out


class AsyncResult(concurrent.futures.Future):
    """Result of a request to one or more engines.

    For a request to one engine (rc[0]) the result is that engine's value, otherwise a list in
    target order (map: the mapped values in order). Remote exceptions are raised as RemoteError
    (one engine) or CompositeError. Awaitable; ``for x in ar`` yields results as they arrive,
    in order.
    """

    _progress_unit = "engine"  # what wait_interactive's bar counts: replies, one per target

    def __init__(self, client, msg_id, targets, method, single=False, post=None, flat=False):
        if _LEAN_INIT:
            # Future.__init__ makes a Condition per future, a good part of the cost of a small
            # request. Ours share their client's: it only guards state changes, since waiting
            # never goes through Future.result() (get(), result() and exception() are ours).
            self._condition = client._future_condition
            self._state = _PENDING
            self._result = None
            self._exception = None
            self._waiters = []
            self._done_callbacks = []
        else:
            super().__init__()
        self._client = client
        self.msg_id = msg_id
        self._targets = list(targets)
        self._method = method
        self._single = single
        self._post = post
        self._flat = flat  # each engine's value is a list of items (map): iterate items
        self._submitted = time.time()
        self._received = None
        self._replies = {}  # engine -> reply, once complete
        self._out = {}  # engine -> [stdout, stderr]
        self._out_log = []  # (engine, stream name, text) in arrival order, for live printing
        self._out_seen = 0
        self._taken = None  # an outcome taken off the connection and not yet settled
        self._absorbed = False
        self._rich = None  # engine -> its reply's rich output, unpickled on first use

    def __repr__(self):
        state = "finished" if self.done() else "pending"
        return f"<AsyncResult({self._method}): {state}>"

    # --- resolution (one owner: whoever took the outcome off the connection) ---
    def _absorb_output(self, chunks):
        with _out_lock:
            for engine, out, err in chunks:
                slot = self._out.setdefault(engine, ["", ""])
                if out:
                    slot[0] += out
                    self._out_log.append((engine, "stdout", out))
                if err:
                    slot[1] += err
                    self._out_log.append((engine, "stderr", err))

    def _settle(self, outcome):
        """Resolves from the outcome taken off the connection. May run again on the same outcome
        (a Ctrl-C interrupted it: it stays in `_taken`), so output is absorbed once."""
        replies, chunks = outcome
        self._received = time.time()
        try:
            if not self._absorbed:
                if chunks:
                    self._absorb_output(chunks)
                final = [(r.engine, r.stdout, r.stderr) for r in replies if r.has_output]
                if final:
                    self._absorb_output(final)
                self._absorbed = True
            if len(replies) == 1 and self._single and self._post is None and replies[0].ok and replies[0].engine >= 0:
                self._resolve_one(replies[0])  # the common case, kept short: an engine's result for a task, rc[i]
            else:
                self._resolve(replies)
        finally:
            self._client._conn.release(self.msg_id)
            self._client._forget(self.msg_id)

    def _resolve_one(self, r):
        engine = r.engine
        if self._targets[0] is None:
            self._targets = [engine]
        self._replies = {engine: r}
        self._succeed(lambda: serialize.loads(r.buffers()))

    def _succeed(self, make_value):
        """Resolves with make_value(); a result that cannot be unpickled here is this request's
        error."""
        try:
            value = make_value()
        except Exception as e:  # Ctrl-C is not this request's result: it propagates, `_taken` stays
            self._fail(e)
            return
        try:
            self.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass

    def _fail(self, exc):
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass
        self._client._forget(self.msg_id)

    def _resolve(self, replies):
        if replies and replies[0].control is not None:  # the controller's own answer (control_reply)
            self._replies = {"controller": replies[0]}  # its buffers: kept results (pcluster.hub)
            try:
                self.set_result(replies[0].control)
            except concurrent.futures.InvalidStateError:
                pass
            return
        for r in replies:
            if r.origin in _WHOLE_REQUEST:
                self._fail(from_reply(r, self._method))
                return
        if self._targets == [None]:  # a farm task: known where it ran only now
            self._targets = [replies[0].engine]
        self._replies = {r.engine: r for r in replies}
        ordered = [self._replies[t] for t in self._targets]
        errors = [from_reply(r, self._method) for r in ordered if not r.ok]
        if errors:
            if self._single:
                self._fail(errors[0])
            else:
                n = len(ordered)
                msg = f"one or more exceptions raised in {self._method} on {len(errors)} of {n} engine(s)"
                self._fail(CompositeError(msg, errors))
            return

        def values():
            vals = [serialize.loads(r.buffers()) for r in ordered]
            if self._post is not None:
                return self._post(vals)
            return vals[0] if self._single else vals

        self._succeed(values)

    def _collect(self, timeout):
        """Waits up to timeout (None: no limit) for the outcome; True once done."""
        if self.done():
            return True
        conn = self._client._conn
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self._taken is None:
                # The binding stores the outcome in self._taken before returning, so a Ctrl-C
                # that lands right after the take cannot lose it.
                conn.wait_take(self.msg_id, timeout, self)
            if self._taken is not None:
                self._client._apply_engine_events()  # an EngineDied caught here finds rc.ids current
                self._settle(self._taken)
                self._taken = None
                return True
        except KeyboardInterrupt:
            if getattr(self._client, "ctrl_c_interrupts", False) and not self.done():
                try:
                    self.interrupt()
                except Exception:  # the job may be gone; the Ctrl-C still stops the wait
                    pass
                raise KeyboardInterrupt(
                    f"interrupted while waiting for {self._method}, and the engines' code was interrupted too "
                    f"(rc.ctrl_c_interrupts); get() on the same AsyncResult collects the outcome"
                ) from None
            raise KeyboardInterrupt(
                f"interrupted while waiting for {self._method}: the engines keep working on it; "
                f"get() on the same AsyncResult collects the result later (ar.interrupt() stops it there)"
            ) from None
        if self.done():
            return True
        if conn.closed and conn.abandon(self.msg_id):
            self._fail(JobEndedError(conn.close_reason))
            return True
        if conn.closed and conn.pending(self.msg_id):
            # Complete after all: take it (or let the result thread finish taking it).
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._collect(left)
        if not conn.pending(self.msg_id):
            # Another thread (the result thread) took it and is resolving it right now.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            concurrent.futures.wait([self], timeout=left)
        return self.done()

    def _blocking_wait(self, timeout):
        """_collect, with a progress bar when a multi-engine wait runs long interactively."""
        if timeout is not None or len(self._targets) < 2:
            return self._collect(timeout)
        if self._collect(PROGRESS_AFTER):
            return True
        if not _progress.enabled():
            return self._collect(None)
        return self.wait_interactive(return_value=True)

    # --- ipyparallel's AsyncResult interface ---
    def ready(self):
        """Whether every reply is in (never blocks)."""
        return self._collect(0)

    def wait(self, timeout=-1):
        """Wait up to timeout seconds (-1/None: no limit); returns ready()."""
        return self._collect(_timeout_arg(timeout))

    def get(self, timeout=-1, return_exceptions=False):
        """The result; raises TimeoutError if it is not ready within timeout seconds.
        return_exceptions=True (ipyparallel's): an engine's error is returned in its place (a
        request to several engines: the list with each engine's value or exception) instead of
        raised."""
        if not self._blocking_wait(_timeout_arg(timeout)):
            raise TimeoutError(f"result of {self._method} not ready after {timeout} s (the work goes on; call get() again)")
        if return_exceptions:
            exc = super().exception(0)
            if exc is not None:
                if isinstance(exc, CompositeError) and self._replies and not self._single and self._post is None:
                    return [from_reply(r, self._method) if not r.ok else serialize.loads(r.buffers())
                            for r in (self._replies[t] for t in self._targets)]
                return exc
        return super().result(0)

    def result(self, timeout=None):
        return self.get(timeout)

    def exception(self, timeout=None):
        if not self._collect(_timeout_arg(timeout)):
            raise TimeoutError(f"result of {self._method} not ready after {timeout} s")
        return super().exception(0)

    def cancel(self):
        """A sent request cannot be withdrawn here: always False (the work goes on)."""
        return False

    def abort(self):
        """Drops this request if it has not started (it then fails with TaskAborted): a
        load-balanced task no engine has started (returns 1 if dropped, 0 if it runs or ran);
        a DirectView request still waiting in the controller (1), or not yet started on its
        engines, which skip it (0: known only when its replies come)."""
        if self.done():
            return 0
        if getattr(self, "_is_task", False):
            return self._client._abort([self.msg_id])
        engines = [t for t in self._targets if t is not None]
        return len(self._client._control(_core.control_action.abort, [self.msg_id], engines).aborted)

    def interrupt(self):
        """Raise KeyboardInterrupt in this request's code where it runs now (a task: on the
        engine it was sent to); the engines serve on. Returns the engine ids told (none when it
        is not running: queued work is dropped with abort())."""
        if self.done():
            return []
        targets = [] if getattr(self, "_is_task", False) else [t for t in self._targets if t is not None]
        rep = self._client._control(_core.control_action.interrupt, [self.msg_id], targets)
        return sorted({q.engine for q in rep.engines})

    @property
    def msg_ids(self):
        """[msg_id]: ipyparallel has one id per engine; a pcluster request has one id for all its
        engines (a map: one per chunk, AsyncMapResult.msg_ids)."""
        return [self.msg_id]

    @property
    def engine_id(self):
        """The engine(s) it ran on: an id for one engine (a task: once it ran), else a list."""
        return self._targets[0] if self._single else list(self._targets)

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
        if self._flat or len(res) != len(self._targets):
            raise ValueError("this result is not one value per engine")
        return dict(zip(self._targets, res))

    @property
    def result_dict(self):
        """get_dict(), as a property (ipyparallel)."""
        return self.get_dict()

    @property
    def sent(self):
        """Whether the request has left this process's hands: always True once the call returned
        (a small frame is copied, a large one written or put in shared memory before it returns),
        so arrays sent may be changed at once. ipyparallel's track=True / wait_for_send have
        nothing to wait for here."""
        return True

    def wait_for_send(self, timeout=-1):
        """Returns at once: see `sent`."""
        return None

    # Metadata fields read as attributes, as ipyparallel's AsyncResult.__getattr__ does.
    _METADATA_ATTRS = frozenset({"submitted", "started", "completed", "received", "status", "error"})

    def __getattr__(self, name):
        if name in AsyncResult._METADATA_ATTRS:
            return self[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def timedelta(self, start, end, start_key=min, end_key=max):
        """Seconds from start_key(start) to end_key(end), each an epoch time or a list of them
        (e.g. ar.timedelta(ar.submitted, ar.completed))."""
        def one(x, key):
            return key(x) if isinstance(x, (list, tuple)) else x
        return one(end, end_key) - one(start, start_key)

    def __await__(self):
        return asyncio.wrap_future(self).__await__()

    def __getitem__(self, key):
        """ar[i]: the i-th result (waits); ar['stdout'] etc.: that metadata field per engine."""
        if isinstance(key, str):
            md = self.metadata
            return md[key] if self._single else [m[key] for m in md]
        res = self.get()
        if self._single:
            raise TypeError("a single-engine result is not indexed; use ar.get()")
        return res[key]

    def __iter__(self):
        """Results in order as they arrive: one per engine, or each mapped value (map)."""
        if self._single:
            raise TypeError("a single-engine result is not iterable (as in ipyparallel); use ar.get()")
        if self._post is not None and not self._flat:
            yield from self.get()
            return
        conn = self._client._conn
        got = {}
        yielded = 0
        for t in self._targets:
            while t not in got and not self.done():
                reps = conn.wait_count(self.msg_id, len(got) + 1, 0.1)
                for r in reps:
                    got.setdefault(r.engine, r)
                if not reps and not conn.pending(self.msg_id):
                    self._collect(None)  # taken by the result thread: wait for it to settle
                if self.done():
                    break
            if self.done():
                break
            r = got[t]
            if not r.ok:
                raise from_reply(r, self._method)
            value = serialize.loads(r.buffers())
            items = value if self._flat else [value]
            yield from items
            yielded += len(items)
        res = self.get()
        if yielded < len(res):
            yield from res[yielded:]

    def __len__(self):
        return len(self._targets)

    # --- timing and metadata ---
    def _pull_output(self):
        if not self.done():
            self._absorb_output(self._client._conn.take_output(self.msg_id))

    @property
    def metadata(self):
        """Per engine (a dict for one engine, else a list in target order): engine_id, status,
        submitted/started/completed/received (epoch seconds), stdout, stderr, execute_result."""
        self.ready()
        self._pull_output()
        mds = []
        for t in self._targets:
            r = self._replies.get(t)
            md = {
                "engine_id": t,
                "method": self._method,
                "msg_id": self.msg_id,
                "submitted": self._submitted,
                "started": r.started if r else None,
                "completed": r.completed if r else None,
                "received": self._received if r else None,
                "status": ("ok" if r.ok else "error") if r else "pending",
                "stdout": self._out.get(t, ["", ""])[0],
                "stderr": self._out.get(t, ["", ""])[1],
                "execute_result": self._execute_reply(r),
                "outputs": self._rich_of(t).get("outputs", []),
                "data": self._rich_of(t).get("data", {}),
                "error": from_reply(r, self._method) if r and not r.ok else None,
            }
            mds.append(md)
        return mds[0] if self._single else mds

    def _per_engine(self, k):
        self._pull_output()
        with _out_lock:
            if self._targets == [None]:
                # A task not finished yet: what its tries printed so far, wherever they ran.
                return "".join(v[k] for v in self._out.values())
            vals = [self._out.get(t, ["", ""])[k] for t in self._targets]
        return vals[0] if self._single else vals

    @property
    def stdout(self):
        """What the request printed to stdout, per engine (a str for one engine); while it runs,
        what has been streamed so far."""
        return self._per_engine(0)

    @property
    def stderr(self):
        return self._per_engine(1)

    @property
    def execute_result(self):
        """execute(..., silent=False): repr of each engine's final expression (None if none), a
        str that is also ipyparallel's ExecuteReply: .data holds the value's mimebundle (HTML,
        images... and text/plain), .metadata its metadata."""
        self.wait()
        vals = [self._execute_reply(self._replies.get(t)) for t in self._targets]
        return vals[0] if self._single else vals

    def _execute_reply(self, r):
        if r is None or r.execute_result is None:
            return None
        from .display import ExecuteReply

        return ExecuteReply(r.execute_result, self._rich_of(r.engine).get("execute_result"))

    # --- rich output (IPython's display protocol on the engines) ---
    def _rich_of(self, engine):
        """{"outputs", "execute_result", "data"} that `engine`'s reply carried ({} when none or
        not in yet): the engine's pcluster._rich.take(), unpickled once."""
        r = self._replies.get(engine)
        if r is None:
            return {}
        if self._rich is None:
            self._rich = {}
        got = self._rich.get(engine)
        if got is None:
            blob = r.rich_output
            got = self._rich[engine] = serialize.loads([blob]) if blob else {}
        return got

    def _rich_per(self, key, empty):
        self.ready()
        vals = [self._rich_of(t).get(key, empty) for t in self._targets]
        return vals[0] if self._single else vals

    @property
    def outputs(self):
        """What each engine showed with IPython's display protocol - display(), %matplotlib
        inline figures (image/png) - as ipyparallel's: per engine (one engine: the list itself)
        a list of {"data": {mime: str}, "metadata": {...}}, binary types base64. Empty until the
        engine's reply is in (they travel with it)."""
        return self._rich_per("outputs", [])

    @property
    def data(self):
        """What each engine published with pcluster.datapub.publish_data (ipyparallel's
        ar.data): per engine a dict, one engine: the dict. Arrives with the reply."""
        return self._rich_per("data", {})

    def _new_output(self):
        """(engine, stream, text) chunks not returned before: for live printing."""
        self._pull_output()
        with _out_lock:
            new = self._out_log[self._out_seen:]
            self._out_seen = len(self._out_log)
        return new

    @property
    def elapsed(self):
        """Seconds from submission until the last reply arrived (until now while pending)."""
        end = self._received if self.done() and self._received else time.time()
        return end - self._submitted

    def _check_ready(self, what):
        if not self.ready():
            raise TimeoutError(f"{what}: {self._method} has not finished yet (wait for it first)")

    @property
    def wall_time(self):
        """Seconds from submission until the last reply was received, as ipyparallel's
        (timedelta(submitted, received)); TimeoutError until done. The engines' own span is
        ar.timedelta(ar.started, ar.completed)."""
        self._check_ready("wall_time")
        return (self._received or self._submitted) - self._submitted

    @property
    def serial_time(self):
        """Sum of the engines' run times; TimeoutError until done (as ipyparallel)."""
        self._check_ready("serial_time")
        return sum(r.completed - r.started for r in self._replies.values())

    @property
    def progress(self):
        """How many engines have replied."""
        if self.done():
            return len(self._targets)
        return len(self._client._conn.wait_count(self.msg_id, 0, 0))

    def display_outputs(self, groupby="type", result_only=False):
        """Shows what the engines printed and displayed, as ipyparallel: labelled [stdout:3],
        [output:3], Out[3]; inside IPython/Jupyter display outputs and rich results show rich
        (HTML, images), elsewhere as their text. groupby: "type" (all stdout, all stderr, then
        display outputs and results), "engine" (one engine after the other) or "order" (as type,
        every engine's first display output, then every engine's second...). result_only: only
        the execute results. Waits for the result."""
        self._show_outputs(groupby, streams=not result_only, rich=not result_only)

    def _show_outputs(self, groupby="type", streams=True, rich=True, count=None):
        from .display import show

        self.wait()
        self._pull_output()
        ts = self._targets
        with _out_lock:
            text = [self._out.get(t, ["", ""]) for t in ts]
        outs = [self._rich_of(t).get("outputs", []) if rich else [] for t in ts]
        results = [self._execute_reply(self._replies.get(t)) for t in ts]
        show(ts, [o for o, _ in text], [e for _, e in text], outs, results, groupby, streams, count)

    def wait_for_output(self, timeout=-1):
        """ipyparallel's: waits until the output is complete - here it travels with the reply,
        so until the result is in; True when it is."""
        return self.wait(timeout)

    @contextlib.contextmanager
    def stream_output(self):
        """ipyparallel's: within the block, what the engines print is shown as it arrives,
        labelled [stdout:3] (a thread prints it, every 0.1 s); leaving it shows the rest."""
        from .display import print_stream

        stop = threading.Event()

        def pump():
            while True:
                for engine, stream, text in self._new_output():
                    print_stream(stream, engine, text)
                if stop.is_set() or self.done():
                    break
                stop.wait(0.1)

        t = threading.Thread(target=pump, name="pcluster-stream-output", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(5.0)  # bounded: one pass of printing
            for engine, stream, text in self._new_output():
                print_stream(stream, engine, text)

    def wait_interactive(self, interval=0.1, timeout=-1, return_value=False):
        """Waits with a progress bar (tqdm; a widget in Jupyter when ipywidgets is there) of
        engines done; PCLUSTER_NONINTERACTIVE=1 turns the bar off."""
        t = _timeout_arg(timeout)
        deadline = None if t is None else time.monotonic() + t
        total = len(self._targets)
        with _progress.bar(total, self._method, self._progress_unit) as bar:
            while not self.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                step = interval if left is None else min(interval, left)
                if self._collect(step):
                    break
                bar.update_to(self.progress)
            bar.update_to(total if self.done() else self.progress)
        if return_value:
            return self.done()
        if not self.done():
            raise TimeoutError(f"result of {self._method} not ready after {timeout} s")
