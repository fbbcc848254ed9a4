"""Results by id: ipyparallel's hub database, kept by the controller.

The controller keeps every request's replies as they went to the client that sent it (bounded:
PCLUSTER_RESULTS_KEEP finished requests, PCLUSTER_RESULTS_MIB of them, replies up to
PCLUSTER_RESULTS_ITEM_KIB each; the oldest finished go first; mpi_controller/result_store.hpp).
So a result can be fetched by its msg_id later, by any client of the job, and by a new Client
after the process that sent the request died: `rc.get_result(ids)`, `rc.results[id]`,
`rc.metadata[id]`, `rc.result_status(ids)`, `rc.db_query(query)`, `rc.hub_history()`,
`rc.resubmit(ids)`, `rc.purge_results(...)`.

A result fetched by id is what the request's engines returned: one engine (or a task) gives its
value, several a list in the order of the request's engines (a DirectView's own AsyncResult may
have shaped it further: a gather's concatenation, a map's flattening, scatter's None).
"""

import collections.abc
import concurrent.futures
import datetime
import numbers
import time

from . import _core, serialize
from .asyncresult import _timeout_arg
from .error import CompositeError, ResultUnavailable, from_reply

_STATE = _core.result_state
_ACTION = _core.control_action
_METHOD = {  # request type number -> the method name results and errors carry
    _core.message_numbers[name]: method
    for name, method in [
        ("task_request", "apply"), ("apply_request", "apply"), ("execute_request", "execute"),
        ("push_request", "push"), ("pull_request", "pull"), ("scatter_request", "scatter"),
        ("gather_request", "gather"), ("map_request", "map"),
    ]
}
_TASK = _core.message_numbers["task_request"]
_FETCH_BYTES = 32 << 20  # kept replies per fetch answer, at most (a larger one comes alone)
_FETCH_IDS = 512
_POLL_MIN, _POLL_MAX = 0.01, 0.5  # a pending result is looked at again after these, doubling


def msg_id_of(x):
    """A request id from what users hold: an int, its string (ipyparallel's ids are strings), an
    AsyncResult (its one id)."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    if isinstance(x, str) and x.strip().isdigit():
        return int(x)
    ids = getattr(x, "msg_ids", None)
    if ids is not None and len(ids) == 1:
        return int(ids[0])
    raise TypeError(f"not a request id: {x!r} (an int or digit string from ar.msg_ids, or an AsyncResult)")


def msg_ids_of(xs):
    """Request ids from one id or AsyncResult, or a list of them (an AsyncMapResult gives all its chunks)."""
    if isinstance(xs, (list, tuple, set)):
        out = []
        for x in xs:
            out.extend(msg_ids_of(x))
        return out
    ids = getattr(xs, "msg_ids", None)
    if ids is not None:
        return [int(i) for i in ids]
    return [msg_id_of(xs)]


def _unavailable(rec):
    """Why the result of record `rec` cannot be had, as the error to raise."""
    why = {
        _STATE.unknown: "no request with this id reached the job (or it was dropped too long ago to say)",
        _STATE.dropped: "it was dropped from the results the job keeps: the oldest go first beyond "
                        "PCLUSTER_RESULTS_KEEP requests or PCLUSTER_RESULTS_MIB MiB (raise them when starting the job)",
        _STATE.purged: "it was purged (purge_results)",
    }.get(rec.state)
    if why is None:  # done, but a reply was too large to keep
        big = max((r.size for r in rec.replies if not r.kept), default=0)
        why = (f"a reply of {big / 2**20:.1f} MiB was over PCLUSTER_RESULTS_ITEM_KIB and not kept (raise it when "
               f"starting the job); its record is kept")
    return ResultUnavailable(f"result of request {rec.id}: {why}")


class _Stored:
    """One request's record and, once fetched, its replies (engine -> reply) in record order."""

    def __init__(self, rec, replies=None):
        self.rec = rec
        self.replies = replies  # list of _core.reply, None when not fetched

    @property
    def method(self):
        return _METHOD.get(self.rec.type, "request")

    def value(self):
        """The request's value, or raises its error (RemoteError / CompositeError) or ResultUnavailable."""
        rec = self.rec
        if rec.state != _STATE.done or any(not r.kept for r in rec.replies):
            raise _unavailable(rec)
        whole = [r for r in self.replies if r.origin == _core.reply_origin.refused]
        if whole:
            raise from_reply(whole[0], self.method)
        by_engine = {r.engine: r for r in self.replies}
        order = list(rec.targets) or [r.engine for r in self.replies]
        ordered = [by_engine[t] for t in order if t in by_engine] or list(self.replies)
        errors = [from_reply(r, self.method) for r in ordered if not r.ok]
        if errors:
            if len(ordered) == 1:
                raise errors[0]
            raise CompositeError(f"one or more exceptions raised in {self.method} on {len(errors)} of "
                                 f"{len(ordered)} engine(s)", errors)
        values = [serialize.loads(r.buffers()) for r in ordered]
        return values[0] if len(values) == 1 else values

    def metadata(self):
        """ipyparallel's record fields we have (times are epoch seconds, as AsyncResult.metadata)."""
        rec, reps = self.rec, self.replies or []
        engines = list(rec.targets) or [r.engine for r in rec.replies]
        md = {
            "msg_id": rec.id,
            "client": _core.client_of(rec.id),
            "method": self.method,
            "engine_id": engines[0] if len(engines) == 1 else engines,
            "submitted": rec.submitted or None,
            "completed": rec.completed or None,
            "state": rec.state.name,
            "resubmitted": rec.resubmitted_as or None,
        }
        if reps:
            ok = all(r.ok for r in reps)
            md.update(
                started=min(r.started for r in reps) or None,
                status="ok" if ok else "error",
                stdout="".join(r.stdout for r in reps),
                stderr="".join(r.stderr for r in reps),
                execute_result=next((r.execute_result for r in reps if r.execute_result is not None), None),
                error=None if ok else from_reply(next(r for r in reps if not r.ok), self.method),
            )
        return md


class Hub:
    """A Client's access to the kept results (one per Client)."""

    def __init__(self, client):
        self._client = client

    def records(self, ids=None):
        """Records of `ids` (every kept request when None), in that order."""
        if ids is None:
            return self._ask(_ACTION.results)[0].records
        ids = list(ids)
        out = []
        for k in range(0, len(ids), _FETCH_IDS):
            out.extend(self._ask(_ACTION.results, ids[k:k + _FETCH_IDS])[0].records)
        return out

    def _ask(self, action, ids=(), targets=()):
        ar = self._client._control_async(action, ids, targets)
        rep = ar.get(30)
        if not rep.ok:
            raise ResultUnavailable(rep.message)
        return rep, ar._replies.get("controller")

    def fetch(self, ids):
        """{id: _Stored} with replies for every finished one whose replies are kept, in batches
        of at most _FETCH_BYTES of replies."""
        ids = list(dict.fromkeys(ids))
        out = {}
        for rec in self.records(ids):
            out[rec.id] = _Stored(rec)
        batch, size = [], 0

        def flush():
            nonlocal batch, size
            if not batch:
                return
            rep, raw = self._ask(_ACTION.fetch_results, batch)
            k = 0
            for rec in rep.records:
                kept = [r for r in rec.replies if r.kept] if rec.state == _STATE.done else []
                replies = [raw.stored(k + j) for j in range(len(kept))]
                k += len(kept)
                out[rec.id] = _Stored(rec, replies)
            batch, size = [], 0

        for rec in out.values():
            if rec.rec.state != _STATE.done:
                continue
            need = sum(r.size for r in rec.rec.replies if r.kept)
            if batch and size + need > _FETCH_BYTES:
                flush()
            batch.append(rec.rec.id)
            size += need
        flush()
        return out


class AsyncHubResult(concurrent.futures.Future):
    """The result of requests named by id (rc.get_result, rc.resubmit): of this client's own
    requests it waits on their AsyncResults; of others' (another client's, an earlier
    connection's) it fetches what the job kept, looking again while they are pending."""

    def __init__(self, client, msg_ids, single):
        super().__init__()
        self._client = client
        self.msg_ids = list(msg_ids)
        self._single = single
        self._values = {}  # id -> ("ok", value) | ("error", exc)
        self._meta = {}

    @property
    def msg_id(self):
        return self.msg_ids[0] if self.msg_ids else None

    def __repr__(self):
        return f"<AsyncHubResult({len(self.msg_ids)} request(s)): {'finished' if self.done() else 'pending'}>"

    def _local(self, msg_id):
        return self._client._by_id.get(msg_id)

    def _look(self):
        """Settles what is ready now; True once every id is."""
        remote = []
        for i in dict.fromkeys(self.msg_ids):
            if i in self._values:
                continue
            ar = self._local(i)
            if ar is not None:
                if ar.done():
                    exc = ar.exception(0)
                    self._values[i] = ("error", exc) if exc is not None else ("ok", ar.result(0))
                    self._meta[i] = ar.metadata
                continue
            remote.append(i)
        if remote:
            got = self._client._hub.fetch(remote)
            for i in remote:
                st = got[i]
                if st.rec.state == _STATE.pending:
                    continue
                try:
                    self._values[i] = ("ok", st.value())
                except Exception as e:  # the request's own error, or why it cannot be had
                    self._values[i] = ("error", e)
                self._meta[i] = st.metadata()
        if any(i not in self._values for i in self.msg_ids):
            return False
        if not self.done():
            outcomes = [self._values[i] for i in self.msg_ids]
            errors = [v for kind, v in outcomes if kind == "error"]
            if errors:
                exc = errors[0] if self._single or len(outcomes) == 1 else CompositeError(
                    f"one or more exceptions in {len(errors)} of {len(outcomes)} requests", errors)
                self.set_exception(exc)
            else:
                vals = [v for _, v in outcomes]
                self.set_result(vals[0] if self._single else vals)
        return True

    def wait(self, timeout=-1):
        """Waits up to timeout seconds (-1/None: no limit); whether every result is in."""
        t = _timeout_arg(timeout)
        deadline = None if t is None else time.monotonic() + t
        pause = _POLL_MIN
        while not self._look():
            local = [self._local(i) for i in self.msg_ids if i not in self._values]
            local = [ar for ar in local if ar is not None]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            step = pause if left is None else min(pause, left)
            if local:
                concurrent.futures.wait(local, timeout=step)
            else:
                time.sleep(step)
            pause = min(pause * 2, _POLL_MAX)
        return True

    def ready(self):
        return self._look()

    def get(self, timeout=-1):
        """The result(s); raises the request's error, ResultUnavailable, or TimeoutError."""
        if not self.wait(timeout):
            raise TimeoutError(f"results of {self.msg_ids} not ready after {timeout} s (they are still pending)")
        return super().result(0)

    def result(self, timeout=None):
        return self.get(timeout)

    def exception(self, timeout=None):
        if not self.wait(timeout):
            raise TimeoutError(f"results of {self.msg_ids} not ready after {timeout} s")
        return super().exception(0)

    def successful(self):
        if not self.ready():
            raise RuntimeError("not finished yet")
        return super().exception(0) is None

    def get_dict(self, timeout=-1):
        """{msg_id: result}."""
        vals = self.get(timeout)
        return dict(zip(self.msg_ids, [vals] if self._single else vals))

    @property
    def metadata(self):
        """Per request (a dict for one): msg_id, client, method, engine_id, submitted, started,
        completed, status, stdout, stderr, execute_result, error."""
        self.ready()
        mds = [self._meta.get(i, {"msg_id": i, "state": "pending"}) for i in self.msg_ids]
        return mds[0] if self._single else mds

    @property
    def r(self):
        return self.get()

    def __await__(self):
        import asyncio

        async def waiting():
            while not self.ready():
                await asyncio.sleep(_POLL_MIN)
            return self.get(0)

        return waiting().__await__()


class ResultsView(collections.abc.Mapping):
    """rc.results / rc.metadata: this client's requests by msg_id (rc.history), their results
    (or errors) / metadata once finished, from this client where it still holds them, else from
    the job's kept results. Any other id is looked up in the job's kept results too."""

    def __init__(self, client, what):
        self._client = client
        self._what = what  # "result" or "metadata"

    def __getitem__(self, msg_id):
        ar = AsyncHubResult(self._client, [msg_id_of(msg_id)], single=True)
        if not ar.ready():
            raise KeyError(f"request {msg_id} has not finished")
        if self._what == "metadata":
            return ar.metadata
        exc = ar.exception(0)
        if isinstance(exc, ResultUnavailable):
            raise KeyError(str(exc))
        return exc if exc is not None else ar.result(0)

    def _finished(self):
        c = self._client
        ids = list(c.history)
        mine = {i: c._by_id.get(i) for i in ids}
        ask = [i for i, ar in mine.items() if ar is None]
        states = {r.id: r.state for r in c._hub.records(ask)} if ask else {}
        return [i for i in ids if (mine[i].done() if mine[i] is not None else states.get(i) == _STATE.done)]

    def __iter__(self):
        return iter(self._finished())

    def __len__(self):
        return len(self._finished())

    def __contains__(self, msg_id):
        try:
            i = msg_id_of(msg_id)
        except TypeError:
            return False
        ar = self._client._by_id.get(i)
        if ar is not None:
            return ar.done()
        return self._client._hub.records([i])[0].state == _STATE.done


_OPS = {
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$ne": lambda a, b: a != b,
    "$eq": lambda a, b: a == b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
    "$exists": lambda a, b: (a is not None) == bool(b),
}
# Fields a record has without fetching its replies.
_RECORD_KEYS = {"msg_id", "client", "method", "engine_id", "submitted", "completed", "state", "resubmitted"}


def _plain(v):
    """Query values as stored: datetimes become epoch seconds."""
    if isinstance(v, datetime.datetime):
        return v.timestamp()
    if isinstance(v, (list, tuple, set)):
        return type(v)(_plain(x) for x in v)
    return v


def _matches(md, query):
    for key, cond in query.items():
        have = md.get(key)
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            for op, want in cond.items():
                if op not in _OPS:
                    raise ValueError(f"db_query: unknown operator {op!r} (known: {', '.join(_OPS)})")
                if isinstance(have, list) and op in ("$eq", "$in") and key == "engine_id":
                    if not any(_OPS[op](h, _plain(want)) for h in have):
                        return False
                elif not _OPS[op](have, _plain(want)):
                    return False
        elif isinstance(have, list) and key == "engine_id":
            if _plain(cond) not in have:
                return False
        elif have != _plain(cond):
            return False
    return True


def db_query(client, query, keys=None):
    """ipyparallel's db_query over the job's kept results: a MongoDB-style `query` ({field:
    value} or {field: {'$lt': v, ...}}, operators $lt $lte $gt $gte $ne $eq $in $nin $exists) on
    msg_id, client, method, engine_id, submitted, completed (epoch seconds or datetimes), state,
    resubmitted, and once fetched started, status, stdout, stderr, execute_result, error, result.
    Returns a list of dicts with `keys` (all when None; msg_id always), oldest first."""
    if not isinstance(query, dict):
        raise TypeError("db_query takes a dict, e.g. {'completed': {'$ne': None}}")
    keys = None if keys is None else list(keys)
    need_replies = bool(set(query) - _RECORD_KEYS) or keys is None or bool(set(keys) - _RECORD_KEYS)
    found = []
    recs = client._hub.records()
    by_id = {}
    if need_replies:
        by_id = client._hub.fetch([r.id for r in recs if r.state == _STATE.done])
    for rec in recs:
        st = by_id.get(rec.id) or _Stored(rec)
        md = st.metadata()
        if need_replies and st.replies is not None and (keys is None or "result" in keys or "result" in query):
            try:
                md["result"] = st.value()
            except Exception as e:
                md["result"] = e
        if _matches(md, query):
            found.append(md if keys is None else {k: md.get(k) for k in ["msg_id"] + [k for k in keys if k != "msg_id"]})
    return found
