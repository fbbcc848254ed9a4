"""Client: attaches to a running pcluster job through its connection file."""

import atexit
import collections
import concurrent.futures
import itertools
import json
import numbers
import os
import sys
import threading
import time
import weakref

from . import _core, hub
from .asyncresult import AsyncResult, _timeout_arg
from .error import AuthenticationError, CompositeError, EngineError, JobEndedError, NoJobError
from .view import DirectView

_request_id = _core.request_id


def default_connection_file():
    """Where `pcluster` writes its connection file by default: $PCLUSTER_CONNECTION_FILE, else
    inside a SLURM job <dir>/slurm-<job id>.json, else <dir>/connection.json, <dir> being
    $PCLUSTER_CONNECTION_DIR or ~/.pcluster. The job and its clients share this one rule."""
    return _core.default_connection_file()


def _read_connection_file(path, timeout):
    """The connection file's checked contents (_core.connection_info), waiting up to timeout
    seconds for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                # Whose file it is decides whether to trust where it says to connect (and what
                # key to send there): a file another user could write is refused.
                _core.check_connection_file(path)
                text = f.read()
            return _core.connection_info.from_json(text.decode("utf-8", "replace"))
        except FileNotFoundError:
            pass
        except _core.ConnectionFileError as e:
            raise NoJobError(f"{path} is not a valid pcluster connection file: {e}") from None
        if time.monotonic() >= deadline:
            raise NoJobError(
                f"no pcluster job found: {path} did not appear within {timeout:g} s. "
                f"Start a job with `mpirun -n 5 pcluster`, or pass its connection file: "
                f"pcluster.Client('/path/to/connection.json')"
            )
        time.sleep(0.05)


def _connect(info, path, timeout, sshserver=None, sshkey=None):
    """A logged-in connection to the job: its address first, then the bridge's other addresses
    (a wildcard listen gives several); errors say what was tried and how to fix it. With
    sshserver, through an ssh tunnel to each of those addresses (pcluster.tunnel)."""
    addresses = [info.ip] + [a for a in info.addresses if a != info.ip]
    deadline = time.monotonic() + timeout
    failures = []
    routes = [(f"{ip}:{info.port}", ip, info.port) for ip in addresses]  # (shown, connect to, port)
    if sshserver:
        from . import tunnel

        local = tunnel.forward(sshserver, [(ip, info.port) for ip in addresses], sshkey, timeout)
        routes = [(f"{ip}:{info.port} through ssh {sshserver}", lip, lport) for ip, (lip, lport) in zip(addresses, local)]
    for k, (shown, ip, port) in enumerate(routes):
        # Through a tunnel a dead address can take a while to fail: the others keep their share.
        left = max(0.5, (deadline - time.monotonic()) / ((len(routes) - k) if sshserver else 1))
        try:
            return _core.connection(ip, port, info.key, float(left))
        except _core.AuthenticationError as e:
            raise AuthenticationError(
                f"{e}: the job at {shown} refused the key in {path}. The file is stale or belongs to "
                f"another job; use the connection file the running job printed."
            ) from None
        except _core.ProtocolVersionError as e:
            raise NoJobError(f"{e} (job at {shown}, from {path})") from None
        except ValueError as e:
            raise NoJobError(
                f"the server at {shown} (from {path}) does not speak the pcluster protocol: {e}. "
                f"The connection file is stale and the port now belongs to another program."
            ) from None
        except (ConnectionError, TimeoutError) as e:
            failures.append(f"{shown} ({e})")
    tried = "; ".join(failures)
    if sshserver:
        hint = (f"The job may have ended, or {sshserver} cannot reach it: pass as sshserver a host that reaches "
                f"the job's nodes (the login node), or start the job with `--ip` set to an address that host reaches.")
    elif len(addresses) == 1 and info.ip.startswith("127.") and info.host:
        hint = (f"The job listens on loopback on {info.host}: if that is another host, restart it with "
                f"`pcluster --ip 0.0.0.0` (or the address of an interface this host reaches), or attach through "
                f"ssh: pcluster.Client(path, sshserver='{info.host}').")
    else:
        hint = ("The job may have ended (start one with `mpirun -n 5 pcluster`), or this host cannot reach it: "
                "start the job with `--ip` set to an address this host can reach, or attach through ssh "
                "with pcluster.Client(path, sshserver='user@host').")
    raise NoJobError(f"no pcluster job answers at {tried} (from {path}). {hint}")


# Clients still open at interpreter exit are closed then: their reader threads stop and their
# shared-memory segments are removed.
_open_clients = weakref.WeakSet()
_newest = None  # weakref to the newest Client, for the magics


def newest_client():
    """The most recently created Client that is still open, or None."""
    rc = _newest() if _newest is not None else None
    if rc is not None and rc._conn.closed:
        return None
    return rc


@atexit.register
def _close_all():
    for c in list(_open_clients):
        try:
            c.close()
        except Exception:
            pass


class Client:
    """A connection to a pcluster job.

    Client(connection_file=None, timeout=10): connection_file is a path (default:
    $PCLUSTER_CONNECTION_FILE or ~/.pcluster/connection.json) or the file's dict; timeout bounds
    the wait for the file to appear and for the job to answer.
    job=1234: the pcluster job with that SLURM job id (its connection file slurm-1234.json; a
    job that is pending, failed or ended is an error naming its state). sshserver="user@host[:port]"
    (and sshkey=): attach through an ssh tunnel when this host cannot reach the job directly.
    """

    def __init__(self, connection_file=None, timeout=10, *, job=None, sshserver=None, sshkey=None):
        try:
            _core.check_settings()
        except ValueError as e:
            raise ValueError(f"pcluster setting: {e}") from None
        if job is not None:
            if connection_file is not None:
                raise ValueError("give either a connection file or job=, not both")
            from . import slurm

            connection_file = slurm.wait_connection_file(job, timeout)
        if isinstance(connection_file, dict):
            path = "<connection dict>"
            try:
                info = _core.connection_info.from_json(json.dumps(connection_file))
            except _core.ConnectionFileError as e:
                raise NoJobError(f"not a valid pcluster connection: {e}") from None
        else:
            path = os.path.abspath(os.path.expanduser(connection_file or default_connection_file()))
            info = _read_connection_file(path, timeout)
        self.connection_file = path
        self.connection_info = info
        self._conn = _connect(info, path, timeout, sshserver, sshkey)
        _open_clients.add(self)
        global _newest
        _newest = weakref.ref(self)
        self._seq = itertools.count(1)
        self._client_no = self._conn.client_no
        self._issued = 0  # the low 32 bits of the newest request id
        self._lock = threading.Lock()
        self._engines = {e.id: e for e in self._conn.engines}  # every engine the job started with
        self._ids = sorted(e.id for e in self._engines.values() if e.alive)
        # (live ids, deaths known): replaced whole when an engine dies, so a request reads both
        # at once - the controller resolves "every engine" by the deaths the client knew of.
        self._known = (tuple(self._ids), len(self._engines) - len(self._ids))
        self._death_callbacks = []
        self._events_lock = threading.Lock()
        self._deaths_to_tell = collections.deque()  # (id, how) for the result thread's callbacks
        self.ctrl_c_interrupts = _core.setting("PCLUSTER_CTRL_C_INTERRUPTS")
        # ipyparallel's Client.block: whether get_result, resubmit and clear wait, and the block a
        # new view starts with (each view then carries its own).
        self.block = False
        self.history = []  # msg_ids of the requests this client sent, oldest first (ipyparallel's rc.history)
        self._by_id = weakref.WeakValueDictionary()  # msg_id -> its AsyncResult while anyone holds it
        self._hub = hub.Hub(self)
        # What requests print on the engines comes back with their results (ar.stdout, %px).
        self.capture_output = True
        # Shared by this client's AsyncResults (see AsyncResult.__init__).
        self._future_condition = threading.Condition()
        self._pending = {}  # msg_id -> AsyncResult, until resolved
        self._results = threading.Thread(target=self._results_loop, name="pcluster-results", daemon=True)
        self._results.start()
        if "IPython" in sys.modules:  # maybe inside IPython or Jupyter: %px comes with a Client
            from . import magics

            magics.load_if_in_ipython()

    # --- engines ---
    @property
    def ids(self):
        """Ids of the live engines (engine k is MPI rank k+1; a dead engine leaves this list)."""
        self._apply_engine_events()  # news that came since the result thread last looked
        return list(self._ids)

    @property
    def engines(self):
        """Every engine the job started with: {id: info} with .host, .pid, .alive and, for a dead
        one, .death (how it died)."""
        self._apply_engine_events()
        return dict(self._engines)

    @property
    def dead_engines(self):
        """{id: how it died} for the engines that died."""
        return {i: e.death for i, e in self.engines.items() if not e.alive}

    def on_engine_died(self, callback):
        """callback(engine_id, how) runs (on the client's result thread) when an engine dies;
        engines already dead are reported at once. Returns the callback (usable as a decorator)."""
        self._death_callbacks.append(callback)
        for i, how in self.dead_engines.items():
            callback(i, how)
        return callback

    def _apply_engine_events(self):
        """Engine news the connection holds (a death): ids, views over all engines and the task
        farm move on without it. Any thread may apply them - a caller woken by EngineDied
        applies them before it sees the error, so rc.ids no longer has the engine then (the news
        arrives before the replies it causes); callbacks run on the result thread."""
        with self._events_lock:
            for ev in self._conn.take_events():
                info = ev.engine
                self._engines[info.id] = info
                if not info.alive and info.id in self._ids:
                    self._ids = [i for i in self._ids if i != info.id]
                    self._known = (tuple(self._ids), self._known[1] + 1)
                    self._deaths_to_tell.append((info.id, info.death))

    def _tell_deaths(self):
        while self._deaths_to_tell:
            i, how = self._deaths_to_tell.popleft()
            for cb in list(self._death_callbacks):
                try:
                    cb(i, how)
                except Exception as e:  # a callback's bug must not stop the result thread
                    import traceback

                    traceback.print_exception(e)

    def __len__(self):
        return len(self._ids)

    def __repr__(self):
        return f"<pcluster.Client job={self._conn.job_id} engines={len(self)}>"

    def _check_id(self, i):
        if i not in self._engines:
            raise IndexError(f"no engine {i}: this job has engines 0..{len(self._engines) - 1}")
        if not self._engines[i].alive:
            if self._conn.closed:  # the job ended: that, not one engine's death, is the news
                raise JobEndedError(self._conn.close_reason)
            raise IndexError(f"engine {i} died ({self._engines[i].death}); the live engines are {self._ids}")
        return i

    def _resolve(self, targets):
        if targets is None or targets == "all":
            return list(self._ids)
        if isinstance(targets, numbers.Integral):
            return [self._check_id(int(targets))]
        if isinstance(targets, slice):
            ids = self._ids[targets]
        else:
            ids = [self._check_id(int(t)) for t in targets]
        if not ids:
            raise IndexError(f"no engines selected by {targets!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"engine ids repeat in {targets!r}")
        return ids

    def __getitem__(self, key):
        """rc[0] (one engine: scalar results), rc[:] (every live engine, also after one died),
        rc[1:3], rc[[0, 2]] (lists of results)."""
        if isinstance(key, numbers.Integral):
            key = int(key)
            if key < 0:  # as ipyparallel: counted from the end of the live engines
                if -key > len(self._ids):
                    raise IndexError(f"no engine {key}: this job has {len(self._ids)} live engines")
                key = self._ids[key]
            return DirectView(self, self._check_id(key))
        if key == slice(None):
            return DirectView(self, "all")
        return DirectView(self, self._resolve(key))

    def direct_view(self, targets="all"):
        """A DirectView; 'all' follows the live engines."""
        return DirectView(self, "all" if targets in ("all", None) else self._resolve(targets))

    def broadcast_view(self, targets="all", is_coalescing=False):
        """ipyparallel's broadcast view: here every DirectView request to several engines already
        goes out as one MPI broadcast and comes back as one combined reply, so this is
        direct_view(targets) (is_coalescing is accepted for compatibility; replies always are)."""
        return self.direct_view(targets)

    def activate(self, targets="all", suffix=""):
        """%px and friends (name + suffix) on a DirectView of targets, blocking (as
        ipyparallel's); returns the view."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view

    def executor(self, targets=None):
        """A concurrent.futures.Executor over a load-balanced view of targets (None: all)."""
        return self.load_balanced_view(targets).executor

    def wait_for_engines(self, n=None, *, timeout=-1, block=True):
        """Returns once n engines are up (None: those of the job). A pcluster job's engines are
        its MPI ranks, all up once the Client connected, and a running job cannot gain any: asking
        for more than it has is an error at once, not a wait that could only time out."""
        have = len(self._ids)
        if n is not None and n > have:
            raise TimeoutError(
                f"this job has {have} live engines and will never have {n}: a pcluster job's engines are its MPI "
                f"ranks, fixed at launch (start one with {n + 1} ranks, e.g. `mpirun -n {n + 1} pcluster`)"
            )
        if block:
            return None
        done = concurrent.futures.Future()
        done.set_result(None)
        return done

    # --- requests ---
    def _new_request(self, msg, bufs, wire_targets, ar_targets, method, direct, deaths_seen=None, **ar_args):
        """Numbers, registers and sends a request; its AsyncResult. wire_targets: engines on the
        wire (empty: every engine alive after deaths_seen deaths, or any for a task); ar_targets:
        whose replies the result waits for."""
        if deaths_seen is None:
            deaths_seen = self._known[1]
        with self._lock:
            self._issued = next(self._seq)
            msg_id = _request_id(self._client_no, self._issued)
        ar = AsyncResult(self, msg_id, ar_targets, method, **ar_args)
        self._pending[msg_id] = ar
        if method != "control":
            self.history.append(msg_id)
            self._by_id[msg_id] = ar
        try:
            self._conn.send(msg, bufs, direct, msg_id, wire_targets, self._capture_flag, len(ar_targets), deaths_seen)
        except ConnectionError as e:
            self._pending.pop(msg_id, None)
            raise JobEndedError(f"cannot send {method}: {self._conn.close_reason or e}") from None
        except BaseException:
            self._pending.pop(msg_id, None)  # never sent: nothing will resolve it
            raise
        return ar

    @property
    def capture_output(self):
        """Whether engines capture what requests print and send it back (default True)."""
        return self._capture_flag != 0

    @capture_output.setter
    def capture_output(self, on):
        self._capture_flag = _core.capture_output if on else 0

    def _submit(self, msg, bufs, ids, method, single=False, post=None, block=False, flat=False, explicit=False):
        """explicit: name the targets on the wire even when they are every live engine (a
        request with one part per target must not meet a job that lost an engine meanwhile)."""
        live, deaths = self._known
        wire = [] if not explicit and len(ids) == len(live) and tuple(ids) == live else ids
        return self._new_request(msg, bufs, wire, ids, method, block, deaths, single=single, post=post, flat=flat)

    def _submit_task(self, msg, bufs, targets, method):
        """A farm task: one reply, from whichever engine (of `targets`, None: any) runs it."""
        wire = [] if targets is None else list(targets)
        ar = self._new_request(msg, bufs, wire, [None], method, False, single=True)
        ar._is_task = True
        return ar

    def _control_async(self, action, ids=(), targets=()):
        """A request the controller answers itself: its AsyncResult (the control_reply)."""
        msg = _core.control_request(action=action, ids=list(ids))
        return self._new_request(msg, [], list(targets), ["controller"], "control", True, single=True)

    def _control(self, action, ids=(), targets=()):
        """A request the controller answers itself; its control_reply."""
        return self._control_async(action, ids, targets).get(30)

    # --- results by id (pcluster.hub: the controller keeps them, bounded) ---
    def _ids_from(self, x):
        """Request ids from history indices (ints below 2**32, -1 the newest), msg_ids (ints or
        their strings), AsyncResults, or a list of those."""
        if isinstance(x, (list, tuple, set)):
            return [i for y in x for i in self._ids_from(y)]
        if isinstance(x, numbers.Integral) and not isinstance(x, bool) and -2**32 < x < 2**32:
            try:
                return [self.history[int(x)]]
            except IndexError:
                raise IndexError(f"no request {x} in this client's history ({len(self.history)} sent)") from None
        return hub.msg_ids_of(x)

    @property
    def results(self):
        """{msg_id: result} of this client's finished requests (rc.history): the value, or the
        exception it raised. Any request id of the job may be looked up (rc.results[id])."""
        return hub.ResultsView(self, "result")

    @property
    def metadata(self):
        """{msg_id: metadata dict} as rc.results: engine_id, submitted, started, completed,
        status, stdout, stderr, execute_result, error."""
        return hub.ResultsView(self, "metadata")

    def get_result(self, indices_or_msg_ids=None, block=None, owner=True):
        """The result of requests by history index (-1: the newest, the default), msg_id or
        AsyncResult, also of another client's requests and of an earlier connection's (after its
        process died): an AsyncHubResult (get() waits; a pending one is looked at again until
        done), or its value when blocking (block=None: rc.block). One id gives its value, a list
        a list. A result the job no longer keeps raises ResultUnavailable saying why."""
        x = -1 if indices_or_msg_ids is None else indices_or_msg_ids
        ids = self._ids_from(x)
        single = len(ids) == 1 and not isinstance(x, (list, tuple, set))
        ar = hub.AsyncHubResult(self, ids, single)
        return ar.get() if (self.block if block is None else block) else ar

    def result_status(self, msg_ids, status_only=True):
        """{'pending': [...], 'completed': [...], 'dropped': [...]} for these requests (dropped:
        no longer kept, or purged); with status_only=False also each completed one's result by
        id. Ids the job never had raise ResultUnavailable."""
        ids = self._ids_from(msg_ids)
        out = {"pending": [], "completed": [], "dropped": []}
        unknown = []
        for rec in self._hub.records(ids):
            st = rec.state
            if st == _core.result_state.unknown:
                unknown.append(rec.id)
            else:
                out["pending" if st == _core.result_state.pending else "completed" if st == _core.result_state.done
                    else "dropped"].append(rec.id)
        if unknown:
            from .error import ResultUnavailable

            raise ResultUnavailable(f"no request with id(s) {unknown} reached this job (or too long ago to say)")
        if not status_only and out["completed"]:
            ar = hub.AsyncHubResult(self, out["completed"], single=False)
            ar.wait(30)
            out.update({i: v for i, (_, v) in ar._values.items()})  # a value, or its exception
        return out

    def hub_history(self):
        """Ids of every request the job keeps a record of (any client's), oldest first."""
        return [r.id for r in self._hub.records()]

    def db_query(self, query, keys=None):
        """ipyparallel's db_query over the job's kept results (pcluster.hub.db_query)."""
        return hub.db_query(self, query, keys)

    def resubmit(self, indices_or_msg_ids=None, block=None):
        """Run finished load-balanced tasks again (any client's, kept by the job), as new tasks of
        this client without their dependencies: an AsyncHubResult over the new ids (their values
        when blocking). A task that cannot run again (not a task, not finished, not kept) fails
        with InvalidTask saying why."""
        x = -1 if indices_or_msg_ids is None else indices_or_msg_ids
        old = self._ids_from(x)
        pairs, ars = [], []
        for i in old:
            with self._lock:
                self._issued = next(self._seq)
                new = _request_id(self._client_no, self._issued)
            ar = AsyncResult(self, new, [None], "apply", single=True)
            ar._is_task = True
            self._pending[new] = ar
            self.history.append(new)
            self._by_id[new] = ar
            self._conn.expect(new, 1)
            pairs += [i, new]
            ars.append(ar)
        rep = self._control(_core.control_action.resubmit, pairs)
        if not rep.ok or rep.refused:
            raise ValueError(rep.message or "; ".join(rep.refused))
        single = len(old) == 1 and not isinstance(x, (list, tuple, set))
        out = hub.AsyncHubResult(self, [a.msg_id for a in ars], single)
        return out.get() if (self.block if block is None else block) else out

    def purge_results(self, jobs=(), targets=()):
        """Forget kept results in the job: jobs='all' (every finished request), ids/AsyncResults,
        and/or the engines `targets` (requests that ran there). Pending ones cannot be purged
        (ValueError naming them, after the others were)."""
        if jobs == "all":
            ids, targets = [], ()
        else:
            ids = self._ids_from(list(jobs) if isinstance(jobs, (list, tuple, set)) else [jobs]) if jobs else []
            if not ids and not targets:
                raise ValueError("purge_results: name jobs (ids, or 'all') and/or targets (engines)")
        engines = [] if not targets else self._resolve(targets) if targets != "all" else list(self._engines)
        if jobs != "all" and not ids and not engines:
            return
        rep = self._control(_core.control_action.purge_results, ids, engines)
        if rep.refused:
            raise ValueError("purge_results: " + "; ".join(rep.refused))

    purge_hub_results = purge_results

    def purge_local_results(self, jobs=(), targets=()):
        """Forget results here: jobs='all', ids, or AsyncResults (and/or those of engines
        `targets`) leave rc.history, rc.results and rc.metadata (the job keeps its copy)."""
        if jobs == "all":
            self.history.clear()
            self._by_id.clear()
            return
        drop = set(self._ids_from(list(jobs) if isinstance(jobs, (list, tuple, set)) else [jobs])) if jobs else set()
        if targets:
            on = set(self._resolve(targets))
            for i in self.history:
                ar = self._by_id.get(i)
                if ar is not None and ar.done() and set(ar._targets) & on:
                    drop.add(i)
        self.history[:] = [i for i in self.history if i not in drop]
        for i in drop:
            self._by_id.pop(i, None)

    def purge_everything(self):
        """purge_results('all') and purge_local_results('all')."""
        self.purge_results("all")
        self.purge_local_results("all")

    def send_signal(self, sig, targets=None, block=None):
        """Send signal `sig` to the engine processes `targets` (default: every live engine), as
        ipyparallel does. SIGINT interrupts the code running there (as interrupt()); another
        signal reaches the process as from kill: a handler set on the engine runs, SIGTERM or
        SIGKILL end the engine (requests waiting on it fail with EngineDied; the job lives on
        when it was started with recovery). Returns the engine ids told; `block` is accepted
        for ipyparallel's signature (the controller answers at once)."""
        ids = self.ids if targets is None else self._resolve(targets)
        rep = self._control(_core.control_action.signal, [int(sig)], ids)
        if not rep.ok:
            raise ValueError(rep.message)
        if rep.refused:
            raise ValueError("; ".join(rep.refused))
        return [q.engine for q in rep.engines]

    def interrupt(self, targets=None):
        """Raise KeyboardInterrupt in the code running on `targets` (default: every live engine),
        as Ctrl-C would locally: the engines keep their namespaces and serve the next request.
        Engines with nothing running are not disturbed. Returns the engine ids told."""
        ids = self.ids if targets is None else self._resolve(targets)
        rep = self._control(_core.control_action.interrupt, (), ids)
        return [q.engine for q in rep.engines]

    def _abort(self, ids):
        rep = self._control(_core.control_action.abort, ids)
        return len(rep.aborted)

    def queue_status(self, targets=None, verbose=False):
        """Per engine, the load-balanced tasks it holds ('queued': waiting on it, 'running',
        'completed'; 'queue' = queued + running, as ipyparallel), and 'unassigned' (accepted,
        not yet sent to an engine; 'waiting' of those wait for dependencies)."""
        rep = self._control(_core.control_action.queue_status)
        ids = self.ids if targets is None else self._resolve(targets)
        out = {}
        for q in rep.engines:
            if q.engine in ids:
                running = min(q.assigned, 1)
                out[q.engine] = {"queue": q.assigned, "queued": q.assigned - running, "running": running,
                                 "completed": q.done, "alive": q.alive}
        out["unassigned"] = rep.unassigned
        out["waiting"] = rep.waiting
        if isinstance(targets, numbers.Integral):  # as ipyparallel: one engine's dict
            return out[int(targets)]
        return out

    def load_balanced_view(self, targets=None):
        """A LoadBalancedView over `targets` (default: every engine)."""
        from .lbview import LoadBalancedView

        return LoadBalancedView(self, targets)

    def clear(self, targets=None, block=None):
        """Empty the namespaces of the engines `targets` (all by default): DirectView.clear
        (block=None: rc.block, False, as ipyparallel)."""
        return self[:].clear(targets=targets, block=block)

    def abort(self, jobs=None):
        """Abort queued load-balanced tasks (AsyncResults or ids; default: every outstanding one);
        returns how many were dropped before they ran."""
        from .lbview import _task_ids

        ids = list(self.outstanding) if jobs is None else _task_ids(jobs)
        return self._abort(ids) if ids else 0

    def _forget(self, msg_id):
        self._pending.pop(msg_id, None)

    def _results_loop(self):
        """Resolves requests nobody is blocked on as their last reply arrives (the connection's
        reader hands them over), so futures complete, callbacks run and awaits wake on their
        own. When the connection ends, whatever is still pending fails with JobEndedError."""
        conn = self._conn
        while True:
            ids = conn.next_completed(0.5)
            self._apply_engine_events()
            self._tell_deaths()
            for msg_id in ids:
                ar = self._pending.get(msg_id)
                try:
                    outcome = conn.take(msg_id)
                    if outcome is None or ar is None:
                        continue  # a blocked caller took it, or nobody holds its result
                    ar._settle(outcome)
                except BaseException as e:  # noqa: B036 - this thread must outlive any one result
                    if ar is not None and not ar.done():
                        ar._fail(e)  # whatever broke it is the request's error, never a hang
            if conn.closed and not ids:
                break
        reason = conn.close_reason
        for msg_id in conn.abandon():
            ar = self._pending.get(msg_id)
            if ar is not None:
                ar._fail(JobEndedError(reason))

    @property
    def outstanding(self):
        """Ids of requests sent and not yet finished."""
        return {msg_id for msg_id, ar in list(self._pending.items()) if not ar.done()}

    def _jobs_and_deadline(self, jobs, timeout):
        if jobs is None:
            jobs = list(self._pending.values())
        if isinstance(jobs, AsyncResult):
            jobs = [jobs]
        t = _timeout_arg(timeout)
        return list(jobs), None if t is None else time.monotonic() + t

    def wait(self, jobs=None, timeout=-1):
        """Wait for AsyncResults (one, a list, or by default every outstanding request); True if
        all finished within timeout (-1/None: no limit)."""
        jobs, deadline = self._jobs_and_deadline(jobs, timeout)
        for ar in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left if left is not None else -1):
                return False
        return True

    def wait_interactive(self, jobs=None, interval=0.1, timeout=-1):
        """rc.wait with a progress bar over the requests."""
        from . import _progress

        jobs, deadline = self._jobs_and_deadline(jobs, timeout)
        with _progress.bar(len(jobs), "requests", "request") as bar:
            while True:
                done = sum(ar.done() for ar in jobs)
                bar.update_to(done)
                if done == len(jobs):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                first = next(ar for ar in jobs if not ar.done())
                first.wait(interval)

    def shutdown(self, targets="all", block=True, timeout=60):
        """End the job: engines stop, the controller and bridge exit and the connection file is
        removed. Code still running gets PCLUSTER_SHUTDOWN_GRACE_S (10 s) to finish, is then
        interrupted, and engines that still do not stop are told to exit 5 s later. Waits
        (bounded by timeout) until the job has ended.

        targets=some engines: those engine processes end at once (what runs there fails with
        EngineDied) and the job goes on without them - only in a job started with recovery
        (`mpirun --enable-recovery`, srun); otherwise ValueError saying why. Waits (bounded by
        timeout) until they left rc.ids; returns their ids."""
        if targets not in ("all", None) and sorted(self._resolve(targets)) != self.ids:
            ids = self._resolve(targets)
            rep = self._control(_core.control_action.stop_engines, (), ids)
            if not rep.ok:
                raise ValueError(rep.message)
            if rep.refused:
                raise ValueError("; ".join(rep.refused))
            deadline = time.monotonic() + timeout
            while block and set(ids) & set(self.ids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"engines {sorted(set(ids) & set(self.ids))} were told to stop and had not "
                                       f"left after {timeout} s")
                time.sleep(0.01)
            return ids
        ar = self._submit(_core.shutdown_request(), [], self.ids, "shutdown", block=True)
        if not block:
            return ar
        try:
            ar.get(timeout)
        except JobEndedError:
            pass  # ended before every engine answered (some had to be told to exit): ended all the same
        except CompositeError as e:
            if not all(isinstance(x, EngineError) for x in e.elist):
                raise  # an engine that died meanwhile has nothing to shut down; anything else is news
        # The bridge says goodbye (and removes the connection file) as the job ends.
        deadline = time.monotonic() + timeout
        while not self._conn.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        self.close()

    def close(self):
        """Disconnect; the job keeps running. Requests still pending fail with JobEndedError."""
        self._conn.close()
        if self._results is not threading.current_thread():
            self._results.join(5)
        _open_clients.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
