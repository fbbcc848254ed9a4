"""DirectView: requests to a fixed set of engines, each with its persistent namespace."""

import builtins
import contextlib
import numbers
import threading

from . import _core, serialize
from .remotefunction import ViewCalls


def _indexable(seq):
    """seq itself when it can be sliced (numpy arrays, lists, ranges: no copy), else listed."""
    return seq if hasattr(seq, "__len__") and hasattr(seq, "__getitem__") else list(seq)


def _blocks(seqs, nparts):
    """The sequences cut to the shortest one's length and split in contiguous blocks, at most
    nparts and never more than there are items (ParallelFunction): one list of blocks per
    sequence; [] for each when they are empty."""
    seqs = [_indexable(s) for s in seqs]
    n = min(len(s) for s in seqs)
    return [_partition(s[:n], min(n, nparts)) if n else [] for s in seqs]


def _partition(seq, nparts):
    """Split seq into nparts contiguous blocks whose lengths differ by at most one (the first
    ones longer), as ipyparallel's dist='b'. numpy arrays and sequences are sliced (views, no
    copy); other iterables are listed first."""
    seq = _indexable(seq)
    n = len(seq)
    q, r = divmod(n, nparts)
    parts, lo = [], 0
    for k in range(nparts):
        hi = lo + q + (1 if k < r else 0)
        parts.append(seq[lo:hi])
        lo = hi
    return parts


def _concat(parts):
    if parts and all(type(p).__module__ == "numpy" and hasattr(p, "ndim") and p.ndim > 0 for p in parts):
        import numpy

        return numpy.concatenate(parts)
    if all(isinstance(p, (list, tuple, range)) for p in parts):
        out = []
        for p in parts:
            out.extend(p)
        return out
    return list(parts)


def _flatten_lists(parts):
    out = []
    for p in parts:
        out.extend(p)
    return out


class DirectView(ViewCalls):
    """Engines addressed explicitly: rc[:], rc[0], rc[1:3], rc[[0, 2]].

    Every method takes block= (default: view.block) and targets= (default: the view's).
    Blocking calls return the value; non-blocking ones an AsyncResult. As in ipyparallel,
    view.block starts as the client's block, False: rc[:].apply(f) returns an AsyncResult
    (apply_sync, map_sync or .get() wait for values). view['a'], view['a'] = x and view.get()
    always block; activate() makes its view blocking (%px waits for the engines).
    """

    def __init__(self, client, targets, block=None):
        self.client = client
        self._targets = targets  # an id, a list of ids, or "all": every live engine when used
        self.block = client.block if block is None else bool(block)
        # ipyparallel's track=True waits for zmq to let go of the buffers; a request's bytes are
        # copied or written before the call returns here, so there is nothing to track.
        self.track = False
        self.history = []  # msg_ids of the requests sent through this view

    @property
    def targets(self):
        """The engines it addresses: an id, or a list (the live engines for rc[:])."""
        return list(self.client._known[0]) if self._targets == "all" else self._targets

    @targets.setter
    def targets(self, value):
        self._targets = value

    def __repr__(self):
        return f"<DirectView {'all' if self._targets == 'all' else self._targets}>"

    def __len__(self):
        return 1 if isinstance(self.targets, numbers.Integral) else len(self.targets)

    # --- flags ---
    _FLAGS = ("block", "targets", "track")

    def _check_flags(self, flags):
        unknown = set(flags) - set(self._FLAGS)
        if unknown:
            raise KeyError(
                f"no flag {', '.join(map(repr, sorted(unknown)))} on a DirectView: its flags are block, targets and track "
                f"(after, follow, retries and timeout are a load-balanced view's)"
            )

    def set_flags(self, **flags):
        """block=, targets= (and track=, accepted: nothing to track) for the following calls."""
        self._check_flags(flags)
        if "track" in flags:
            self.track = bool(flags["track"])
        if "targets" in flags:
            t = flags["targets"]
            self._targets = "all" if t in (None, "all") else t
        if "block" in flags:
            self.block = bool(flags["block"])

    @contextlib.contextmanager
    def temp_flags(self, **flags):
        """with view.temp_flags(block=False): ... - the flags for the calls inside only."""
        saved = (self._targets, self.block, self.track)
        self.set_flags(**flags)
        try:
            yield self
        finally:
            self._targets, self.block, self.track = saved

    def abort(self, jobs=None, targets=None, block=None):
        """Drop this view's requests that have not started (jobs: AsyncResults, default: every
        outstanding request sent through this view): one still waiting in the controller is
        dropped, an engine skips one it has not started; each fails with TaskAborted. Running
        ones go on (view.interrupt() stops them). Returns None, as ipyparallel's; `block` is
        accepted for its signature (the controller answers at once)."""
        from .asyncresult import AsyncResult

        if jobs is None:
            ars = [self.client._by_id.get(i) for i in self.history]
            ars = [a for a in ars if a is not None and not a.done()]
        else:
            ars = jobs if isinstance(jobs, (list, tuple, set)) else [jobs]
            if not all(isinstance(a, AsyncResult) for a in ars):
                raise TypeError("DirectView.abort takes AsyncResults of this view's requests")
        ars = [a for a in ars if not a.done()]
        if not ars:
            return None
        engines = sorted({t for a in ars for t in a._targets if t is not None})
        self.client._control(_core.control_action.abort, [a.msg_id for a in ars], engines)
        return None

    def interrupt(self):
        """Raise KeyboardInterrupt in the code running on this view's engines (see
        Client.interrupt); returns the engine ids told."""
        t = self.targets
        return self.client.interrupt([t] if isinstance(t, numbers.Integral) else t)

    def activate(self, suffix=""):
        """Makes %px, %%px, %autopx, %pxresult and %pxconfig (each name + suffix) run on this
        view's engines in the current IPython session, and makes the view blocking (as
        ipyparallel's rc.activate() does: %px waits for the engines; %pxconfig --noblock for
        not waiting)."""
        try:
            from IPython import get_ipython
        except ImportError:
            get_ipython = None
        shell = get_ipython() if get_ipython else None
        if shell is None:
            raise RuntimeError("activate() registers IPython magics: call it inside IPython or Jupyter")
        from . import magics

        self.block = True
        return magics.load(shell, view=self, suffix=suffix)

    # --- one private path for every verb ---
    def _resolve_targets(self, targets):
        t = self.targets if targets is None else targets
        if isinstance(t, numbers.Integral):
            return [self.client._check_id(int(t))], True
        ids = self.client._resolve(t)
        return ids, False

    def _run(self, msg, bufs, method, targets, block, parts=None, post=None, flat=False, keep_ar=False):
        ids, single = self._resolve_targets(targets)
        if parts is not None:
            msg.r.shared_bufs = len(bufs)
            msg.r.part_bufs = [len(p) for p in parts]
            for p in parts:
                bufs.extend(p)
        block = self.block if block is None else block
        ar = self.client._submit(msg, bufs, ids, method, single and post is None, post, block, flat, explicit=parts is not None)
        self.history.append(ar.msg_id)
        if not block:
            return ar
        value = ar.get()
        return ar if keep_ar else value

    # --- namespace ---
    def push(self, ns, targets=None, block=None):
        """Merge the dict ns into each engine's namespace."""
        if not isinstance(ns, dict):
            raise TypeError(f"push takes a dict of names to values, not {type(ns).__name__}")
        bufs = serialize.checked_dumps(dict(ns), "the pushed namespace")
        return self._run(_core.push_request(), bufs, "push", targets, block)

    def update(self, ns):
        """push(ns), blocking as view.block says (as ipyparallel's update)."""
        return self.push(ns)

    def pull(self, names, targets=None, block=None):
        """Values of names (a str, or a list of str) from each engine."""
        scalar = isinstance(names, str)
        names = [names] if scalar else list(names)
        if not all(isinstance(n, str) for n in names):
            raise TypeError("pull takes a name or a list of names (str)")
        msg = _core.pull_request(names=names, scalar=scalar)
        return self._run(msg, [], "pull", targets, block)

    def get(self, key):
        """pull(key), always blocking (as ipyparallel's)."""
        return self.pull(key, block=True)

    def __getitem__(self, key):
        """view['a']: pull('a'), always blocking."""
        if not isinstance(key, str):
            raise TypeError("view[...] takes a variable name; use client[...] to choose engines")
        return self.pull(key, block=True)

    def __setitem__(self, key, value):
        """view['a'] = x: push({'a': x}), always blocking, so that an engine's error is raised
        (ipyparallel sends it per view.block and drops the result and its errors)."""
        self.push({key: value}, block=True)

    # --- code ---
    def execute(self, code, silent=True, targets=None, block=None):
        """Run code (a str) in each engine's namespace. Returns an AsyncResult, after waiting
        for it when blocking (errors are raised then)."""
        if not isinstance(code, str):
            raise TypeError(f"execute takes code as a str, not {type(code).__name__}")
        msg = _core.execute_request(code=code, silent=bool(silent))
        return self._run(msg, [], "execute", targets, block, keep_ar=True)

    def clear(self, targets=None, block=None):
        """Empty each engine's namespace: every name the user's code, pushes and scatters made
        there goes (dunder names stay, as does what engines import for themselves)."""
        return self._run(_core.apply_request(), serialize.pack_call(_clear_namespace), "clear", targets, block)

    def run(self, filename, targets=None, block=None):
        """Run the Python file's code in each engine's namespace (the file is read here, on the
        client): execute(open(filename).read())."""
        with open(filename, encoding="utf-8") as f:
            code = f.read()
        return self.execute(code, targets=targets, block=block)

    @property
    def importer(self):
        """sync_imports(local=True), as a property: ``with view.importer: import numpy``."""
        return self.sync_imports(True)

    @contextlib.contextmanager
    def sync_imports(self, local=True, quiet=False):
        """with view.sync_imports(): import numpy - the import statements inside run here (unless
        local=False) and on every engine of the view. `import a.b`, `import a as b` and
        `from a import b, c` travel as written; imports that the imported modules do themselves
        do not."""
        statements = []
        real_import = builtins.__import__
        depth = threading.local()
        me = threading.get_ident()

        def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
            outer = getattr(depth, "n", 0) == 0 and threading.get_ident() == me
            if outer:
                if level:
                    raise ImportError("sync_imports cannot send relative imports (`from . import x`) to the engines")
                statements.append(f"from {name} import {', '.join(fromlist)}" if fromlist else f"import {name}")
            if not local and outer:
                # Not imported here: what `import a.b` binds, without loading it.
                return _Unloaded(name) if not fromlist else _Unloaded(name, fromlist)
            depth.n = getattr(depth, "n", 0) + 1
            try:
                return real_import(name, globals, locals, fromlist, level)
            finally:
                depth.n -= 1

        builtins.__import__ = recording_import
        try:
            yield
        finally:
            builtins.__import__ = real_import
        if statements:
            if not quiet:
                print(f"importing {', '.join(s.split(' import ')[-1] if s.startswith('from') else s[7:] for s in statements)} on engine(s)")
            self.execute("\n".join(statements), block=True)

    # f is positional-only: every keyword argument, whatever its name (f, args, block,
    # targets...), goes to f.
    def apply(self, f, /, *args, **kwargs):
        """f(*args, **kwargs) on each engine; blocks per view.block. Every keyword argument goes
        to f. What f sees: docs/architecture.md, "Serialization" (values defined interactively
        travel by value; names not sent come from the engine's namespace)."""
        return self._apply(f, args, kwargs, None)

    def apply_sync(self, f, /, *args, **kwargs):
        return self._apply(f, args, kwargs, True)

    def apply_async(self, f, /, *args, **kwargs):
        return self._apply(f, args, kwargs, False)

    def _apply(self, f, args, kwargs, block):
        if not callable(f):
            raise TypeError(f"apply needs a callable, not {type(f).__name__}")
        bufs = serialize.pack_call(f, args, kwargs)
        return self._run(_core.apply_request(), bufs, "apply", None, block)

    def map(self, f, *seqs, block=None):
        """[f(*xs) for xs in zip(*seqs)], the work split in contiguous blocks over the engines;
        the result is in order."""
        if not seqs:
            raise TypeError("map needs at least one sequence")
        ids, _ = self._resolve_targets(None)
        fbufs = serialize.pack_call(f)
        split = [_partition(s, len(ids)) for s in seqs]
        parts = [serialize.checked_dumps(list(zip(*chunks)), "the mapped sequence") for chunks in zip(*split)]
        return self._run(_core.map_request(), fbufs, "map", None, block, parts=parts, post=_flatten_lists, flat=True)

    def _parallel(self, f, seqs, block):
        """ParallelFunction's call: f(*blocks) once per engine, the results joined."""
        ids, _ = self._resolve_targets(None)
        split = _blocks(seqs, len(ids))
        if not split[0]:
            return []
        ids = ids[: len(split[0])]
        fbufs = serialize.pack_call(f)
        parts = [serialize.checked_dumps([tuple(chunks)], "the sequence's block") for chunks in zip(*split)]
        return self._run(_core.map_request(), fbufs, "parallel", ids, block, parts=parts,
                         post=lambda rs: _concat(_flatten_lists(rs)), flat=True)

    def map_sync(self, f, *seqs):
        return self.map(f, *seqs, block=True)

    def map_async(self, f, *seqs):
        return self.map(f, *seqs, block=False)

    # --- distributed data ---
    def scatter(self, key, seq, dist="b", flatten=False, targets=None, block=None):
        """Bind key on each engine to its contiguous block of seq (numpy arrays travel without
        copies). Blocking returns None."""
        if dist != "b":
            raise ValueError("only dist='b' (contiguous blocks) is supported")
        ids, _ = self._resolve_targets(targets)
        parts = [serialize.checked_dumps(p, f"part of {key!r}") for p in _partition(seq, len(ids))]
        msg = _core.scatter_request(key=key, flatten=flatten)
        r = self._run(msg, [], "scatter", ids, block, parts=parts, post=lambda _: None)
        return r

    def gather(self, key, dist="b", targets=None, block=None):
        """key from each engine, concatenated in engine order (numpy arrays with
        numpy.concatenate, sequences into one list)."""
        if dist != "b":
            raise ValueError("only dist='b' (contiguous blocks) is supported")
        ids, _ = self._resolve_targets(targets)
        msg = _core.gather_request(key=key)
        return self._run(msg, [], "gather", ids, block, post=_concat)


def _clear_namespace():
    import __main__

    ns = __main__.__dict__
    for name in [n for n in ns if not n.startswith("__")]:
        del ns[name]


class _Unloaded:
    """What `import a.b` (or `from a import b`) gives inside sync_imports(local=False): the
    names are bound so the code runs on, but nothing was imported here. Sent to an engine (a
    function using the name), it becomes the engine's real module or object."""

    def __init__(self, name, fromlist=()):
        self.__name__ = name
        for attr in fromlist:
            setattr(self, attr, _Unloaded(f"{name}.{attr}"))

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unloaded(f"{self.__name__}.{attr}")

    def __reduce__(self):
        return (_resolve_dotted, (self.__name__,))

    def __repr__(self):
        return f"<module {self.__name__!r}: imported on the engines only (sync_imports(local=False))>"


def _resolve_dotted(name):
    """The module `name`, or the attribute its last part names of the module before it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        if "." not in name:
            raise
        head, _, attr = name.rpartition(".")
        return getattr(_resolve_dotted(head), attr)
