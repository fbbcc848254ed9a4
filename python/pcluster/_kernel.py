"""Engine side of every request; called by the C++ engine loop, one request at a time."""

import __main__
import functools
import itertools
import linecache
import sys
import time
import traceback
import types

from . import _core, engine, serialize

_ns = __main__.__dict__
_id = -1


def start(engine_id, num_engines, comm_handle):
    global _id
    _id = engine_id
    engine.engine_id = engine_id
    engine.num_engines = num_engines
    engine._comm_handle = comm_handle
    _ns.setdefault("__builtins__", __builtins__)


def _lookup(name):
    try:
        return _ns[name]
    except KeyError:
        raise NameError(f"name '{name}' is not defined") from None


def _bind(f):
    """Functions that came by value (defined interactively on the client) run in this engine's
    namespace, as code given to execute() would: names the client did not send are looked up
    here. Globals the client sent that the engine lacks are added to the namespace."""
    if not isinstance(f, types.FunctionType):
        return f
    mod = sys.modules.get(f.__module__)
    if mod is not None and f.__globals__ is getattr(mod, "__dict__", None):
        return f  # an importable module's function: keep its own globals
    for k, v in f.__globals__.items():
        if not k.startswith("__") and k not in _ns:
            _ns[k] = v
    g = types.FunctionType(f.__code__, _ns, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__ = f.__kwdefaults__
    g.__qualname__ = f.__qualname__
    g.__dict__.update(f.__dict__)
    return g


_cell = itertools.count(1)


@functools.lru_cache(maxsize=256)
def _compiled(code):
    """Code objects of recently run cells: a loop that runs the same cell again skips the
    compiler. A linecache entry per cell lets tracebacks quote the user's source lines."""
    name = f"<execute-{next(_cell)}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    return compile(code, name, "exec")


def _execute(msg, shared, part):
    exec(_compiled(msg.code), _ns)
    return None


def _push(msg, shared, part):
    _ns.update(serialize.loads(shared))
    return None


def _pull(msg, shared, part):
    if msg.single:
        return _lookup(msg.names[0])
    return [_lookup(n) for n in msg.names]


def _apply(msg, shared, part):
    f, args, kwargs = serialize.loads(shared)
    return _bind(f)(*args, **kwargs)


def _scatter(msg, shared, part):
    value = serialize.loads(part)
    if msg.flatten and isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    _ns[msg.key] = value
    return None


def _gather(msg, shared, part):
    return _lookup(msg.key)


def _map(msg, shared, part):
    f = _bind(serialize.loads(shared))
    return [f(*args) for args in serialize.loads(part)]


def _shutdown(msg, shared, part):
    return None


_handlers = {
    _core.execute_request: _execute,
    _core.push_request: _push,
    _core.pull_request: _pull,
    _core.apply_request: _apply,
    _core.scatter_request: _scatter,
    _core.gather_request: _gather,
    _core.map_request: _map,
    _core.shutdown_request: _shutdown,
}


def _remote_traceback(exc):
    """The traceback without this module's own frames: the user sees only their code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
        tb = tb.tb_next
    return traceback.format_exception(type(exc), exc, tb)


def _safe_str(e):
    try:
        return str(e)
    except BaseException:  # noqa: B036
        return f"<unprintable {type(e).__name__} object>"


def _flush_streams():
    # User code may replace or close sys.stdout/sys.stderr; that is its business, not an error
    # of every later request.
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:  # noqa: B036
            pass


def handle(frame, part):
    """The request boundary: whatever the user's code does (raise, SystemExit,
    KeyboardInterrupt), the reply says so and the engine lives on. Returns the reply frame as a
    list of buffers: [head, pickle stream, out-of-band buffers...]."""
    rep = _core.engine_reply()
    rep.engine = _id
    rep.started = time.time()
    bufs = []
    try:
        msg, shared, parts = _core.decode_request(frame, part, _id)
        rep.id = msg.r.id
        result = _handlers[type(msg)](msg, shared, parts)
        try:
            bufs = serialize.dumps(result)
        except Exception as e:
            raise TypeError(f"the result cannot be sent back: it cannot be pickled ({type(e).__name__}: {e})") from e
        rep.ok = True
    except BaseException as e:  # noqa: B036 - the boundary must catch SystemExit/KeyboardInterrupt too
        bufs = []
        rep.ok = False
        rep.ename = type(e).__name__
        rep.evalue = _safe_str(e)
        try:
            rep.traceback = _remote_traceback(e)
        except BaseException:  # noqa: B036 - a hostile exception must not break the reply
            rep.traceback = [f"{rep.ename}: {rep.evalue}\n"]
    finally:
        _flush_streams()
    rep.completed = time.time()
    return [_core.encode_reply(rep, bufs)] + bufs
