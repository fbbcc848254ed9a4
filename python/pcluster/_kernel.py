"""Engine side of every request; called by the C++ engine loop, one request at a time."""

import __main__
import ast
import functools
import io
import itertools
import linecache
import os
import signal
import sys
import time
import traceback
import types

from . import _core, _rich, engine, error, serialize

try:
    import _pcluster_engine as _capture  # built into the engine program
except ImportError:  # imported outside an engine (docs, tests of this module)
    _capture = None

_ns = __main__.__dict__
_id = -1
_CAPTURE = _core.capture_output


class _CapturedStream(io.TextIOBase):
    """sys.stdout / sys.stderr of an engine: while a request captures its output, what it
    prints goes to the engine's capture (sent back with the reply, streamed while a long request
    runs); otherwise to the engine's own stream (mpirun's terminal)."""

    def __init__(self, stream_no, real):
        self._no = stream_no
        self._real = real

    @property
    def encoding(self):
        return "utf-8"

    @property
    def name(self):
        return "<stdout>" if self._no == 1 else "<stderr>"

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not _capture.write(self._no, s):
            self._real.write(s)
        return len(s)

    def flush(self):
        try:
            self._real.flush()
        except Exception:
            pass


_stdout = _stderr = None


def start(engine_id, num_engines, comm_handle):
    global _id, _stdout, _stderr, _interrupt_signal
    _id = engine_id
    engine.engine_id = engine_id
    engine.num_engines = num_engines
    engine.engines = list(range(num_engines))
    engine.host = __import__("socket").gethostname()
    engine._comm_handle = comm_handle
    _ns.setdefault("__builtins__", __builtins__)
    if _capture is not None:
        _stdout = _CapturedStream(1, sys.__stdout__)
        _stderr = _CapturedStream(2, sys.__stderr__)
        _interrupt_signal = _capture.interrupt_signal()
        signal.signal(_interrupt_signal, _on_interrupt)
        signal.signal(signal.SIGINT, _on_sigint)
        os._exit = _exit_with_last_words
        _rich.start()


# --- interrupts and last words ------------------------------------------------------------------
_current = 0  # the request running now (0: none)
_interrupt_signal = None


def _on_interrupt(signum, frame):
    """The engine's interrupt signal (sent by its watch thread, to this thread only): raise
    KeyboardInterrupt in the running request if the interrupt is for it - a signal that arrives
    late, after that request ended, is dropped rather than hitting the next one."""
    if _current and _capture.take_interrupt(_current):
        raise KeyboardInterrupt(f"interrupted on engine {_id}")


def _on_sigint(signum, frame):
    """kill -INT on an engine interrupts the request running there, and nothing else: between
    requests it is ignored (Python's default would leave it pending for the next request)."""
    if _current:
        raise KeyboardInterrupt(f"SIGINT on engine {_id}")


_real_exit = os._exit


def _exit_with_last_words(code):
    """os._exit on an engine: tell the controller the exit code first (it reports how the engine
    died), then exit."""
    try:
        _capture.last_words(int(code))
    except BaseException:  # noqa: B036 - exiting anyway
        pass
    _real_exit(code)


def rebind(comm_handle, alive):
    """Another engine died: pcluster.engine.comm is the survivors' communicator, `comm_handle`,
    or (None) the one they are building: asking for it waits for it."""
    engine._comm_handle = comm_handle
    engine._comm = None
    engine._comm_pending = comm_handle is None
    engine.engines = list(alive)


def _lookup(name):
    try:
        return _ns[name]
    except KeyError:
        raise NameError(f"name '{name}' is not defined") from None


_cell = itertools.count(1)


@functools.lru_cache(maxsize=256)
def _compiled(code):
    """Code objects of recently run cells: a loop that runs the same cell again skips the
    compiler. A cell Python cannot compile may be IPython syntax (%timeit, !ls, %%time):
    IPython's transformer makes Python of it (_rich.ipython_source; plain Python never gets
    there), else its SyntaxError is the cell's error."""
    name = _cell_name(code)
    try:
        return compile(code, name, "exec")
    except SyntaxError as e:
        return compile(_rich.ipython_source(code, e), name, "exec")


def _cell_name(code):
    """A new cell's file name, with a linecache entry so tracebacks quote the user's lines."""
    name = f"<execute-{next(_cell)}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    return name


@functools.lru_cache(maxsize=256)
def _compiled_interactive(code):
    """(statements, final expression or None): a cell whose last statement is an expression
    shows that expression's value, as IPython's Out[...]."""
    name = _cell_name(code)
    try:
        tree = ast.parse(code, name, "exec")
    except SyntaxError as e:
        tree = ast.parse(_rich.ipython_source(code, e), name, "exec")
    last = None
    # As IPython: a cell ending in ';' shows no value.
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        last = compile(ast.Expression(tree.body.pop().value), name, "eval")
    return compile(tree, name, "exec"), last


# Request type -> the function that serves it: handler(msg, shared buffers, part buffers) ->
# the result to pickle back. Every request type of the protocol that reaches engines has one
# (tests/python/test_protocol.py checks).
_handlers = {}


def _handles(name):
    def register(f):
        _handlers[getattr(_core, name)] = f
        return f

    return register


@_handles("execute_request")
def _execute(msg, shared, part):
    if _rich.shell_built():  # IPython's cell events: %matplotlib inline shows figures after a cell
        _rich.pre_execute()
        try:
            return _run_cell(msg)
        finally:
            _rich.post_execute()
    return _run_cell(msg)


def _run_cell(msg):
    if msg.silent:
        exec(_compiled(msg.code), _ns)
        return None
    body, last = _compiled_interactive(msg.code)
    exec(body, _ns)
    if last is not None:
        value = eval(last, _ns)
        if value is not None:
            _ns["_"] = value
            result = _ExecuteResult(repr(value))
            result.bundle = _rich.bundle(value)
            return result
    return None


def _cut(text):
    """A reply's header holds at most 16 MiB: long texts (an exception's message, a traceback, an
    execute result) are cut at PCLUSTER_MAX_REPLY_TEXT characters, saying so. What a request
    prints is never cut: it goes out in output messages."""
    if len(text) <= _MAX_TEXT:
        return text
    return f"{text[:_MAX_TEXT]}\n… {len(text) - _MAX_TEXT} characters cut (PCLUSTER_MAX_REPLY_TEXT={_MAX_TEXT})"


_MAX_TEXT = _core.setting("PCLUSTER_MAX_REPLY_TEXT")


class _ExecuteResult(str):
    """The repr of a cell's final expression: goes in the reply's execute_result; `bundle`, its
    mimebundle when it has more than text/plain, goes in rich_output."""

    bundle = None


@_handles("push_request")
def _push(msg, shared, part):
    _ns.update(serialize.loads(shared))
    return None


@_handles("pull_request")
def _pull(msg, shared, part):
    if msg.scalar:
        return _lookup(msg.names[0])
    return [_lookup(n) for n in msg.names]


_functions = {}  # pickle bytes -> (code, globals, name, defaults, kwdefaults, qualname), oldest first


def _function(fbytes):
    """The function a client sent (serialize.dumps_function bytes), unpickled for this call: a
    function that came by value sees what was sent with it, and names it did not send are looked
    up in this engine's namespace (serialize.Globals); nothing it does to its globals outlives
    the call. A loop of small applies of the same function skips the unpickling: bytes seen
    before (up to 128 kept) give a new function over a copy of the same globals - kept only when
    every value it carries cannot change in place (serialize.frozen), so a call cannot leave
    anything behind for the next one."""
    hit = _functions.get(fbytes)
    if hit is not None:
        code, g, name, defaults, kwdefaults, qualname = hit
        f = types.FunctionType(code, serialize.Globals(g) if type(g) is serialize.Globals else g, name, defaults)
        if kwdefaults:
            f.__kwdefaults__ = dict(kwdefaults)
        f.__qualname__ = qualname
        return f
    f = serialize.loads([fbytes])
    if _reusable(f):
        if len(_functions) >= 128:
            del _functions[next(iter(_functions))]
        g = f.__globals__  # kept as sent: this call gets the original, later ones copies
        g = serialize.Globals(g) if type(g) is serialize.Globals else g
        kw = f.__kwdefaults__ and dict(f.__kwdefaults__)
        _functions[fbytes] = (f.__code__, g, f.__name__, f.__defaults__, kw, f.__qualname__)
    return f


def _reusable(f):
    if type(f) is not types.FunctionType or f.__closure__ is not None:
        return False
    if f.__dict__ and f.__dict__ != {serialize._INTERACTIVE: True}:
        return False
    g = f.__globals__
    if type(g) is serialize.Globals:
        carried = [v for k, v in g.items() if not k.startswith("__")]
    elif g is _ns:  # @interactive: runs in the namespace, carries nothing
        carried = []
    else:  # an importable module's function: its module's globals are its own business
        return False
    carried += f.__defaults__ or ()
    carried += (f.__kwdefaults__ or {}).values()
    return all(serialize.frozen(v) for v in carried)


@_handles("apply_request")
def _apply(msg, shared, part):
    fbytes, args, kwargs = serialize.unpack_call(shared)
    f = _function(fbytes)
    return f(*args, **kwargs) if kwargs else f(*args)


@_handles("scatter_request")
def _scatter(msg, shared, part):
    value = serialize.loads(part)
    if msg.flatten and isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    _ns[msg.key] = value
    return None


@_handles("gather_request")
def _gather(msg, shared, part):
    return _lookup(msg.key)


@_handles("map_request")
def _map(msg, shared, part):
    fbytes, _, _ = serialize.unpack_call(shared)
    f = _function(fbytes)
    return [f(*args) for args in serialize.loads(part)]


@_handles("task_request")
def _task(msg, shared, part):
    """A farm task: a call, or a chunk of a load-balanced map (serialize.pack_chunk)."""
    if msg.kind == _core.task_kind.call:
        return _apply(msg, shared, part)
    fbytes, items, single = serialize.unpack_chunk(shared)
    f = _function(fbytes)
    if not msg.return_exceptions:
        return [f(x) for x in items] if single else [f(*a) for a in items]
    out = []
    for x in items:
        try:
            out.append(f(x) if single else f(*x))
        except Exception as e:  # map(..., return_exceptions=True): the error takes the item's place
            out.append(_item_error(e))
    return out


def _item_error(e):
    from .error import RemoteError

    try:
        tb = "".join(_remote_traceback(e))
    except Exception:
        tb = ""
    return RemoteError(type(e).__name__, _safe_str(e), tb, {"engine_id": _id, "method": "map"})


@_handles("shutdown_request")
def _shutdown(msg, shared, part):
    return None


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
    started = time.time()
    msg_id = 0
    bufs = []
    execute_result = None
    result_bundle = None
    capturing = False
    global _current
    try:
        msg, shared, parts = _core.decode_request(frame, part, _id)
        msg_id = msg.r.id
        if _capture is not None:
            capturing = bool(msg.r.flags & _CAPTURE)
            _capture.begin(msg_id, capturing)
            if capturing and (sys.stdout is not _stdout or sys.stderr is not _stderr):
                sys.stdout, sys.stderr = _stdout, _stderr
            if signal.getsignal(_interrupt_signal) is not _on_interrupt:  # user code replaced it
                signal.signal(_interrupt_signal, _on_interrupt)
            _current = msg_id
        result = _handlers[type(msg)](msg, shared, parts)
        if type(result) is _ExecuteResult:
            execute_result = _cut(str(result))
            result_bundle = result.bundle
            result = None
        try:
            bufs = serialize.dumps(result)
        except Exception as e:
            raise TypeError(f"the result cannot be sent back: it cannot be pickled ({type(e).__name__}: {e})") from e
        rep = _Reply()  # attribute sets: cheaper than the keyword constructor on this hot path
        rep.id = msg_id
        rep.engine = _id
        if execute_result is not None:
            rep.execute_result = execute_result
    except BaseException as e:  # noqa: B036 - the boundary must catch SystemExit/KeyboardInterrupt too
        bufs = []
        ename, evalue = type(e).__name__, _cut(_safe_str(e))
        try:
            tb = _remote_traceback(e)
            if sum(map(len, tb)) > _MAX_TEXT:
                tb = [_cut("".join(tb))]
        except BaseException:  # noqa: B036 - a hostile exception must not break the reply
            tb = [f"{ename}: {evalue}\n"]
        kind = _UNMET if isinstance(e, error.UnmetDependency) else _NO_KIND
        rep = _core.error_reply(msg_id, _ENGINE, _id, kind, ename, evalue, tb)
    finally:
        _current = 0
        _flush_streams()
        if _capture is not None:
            out = _capture.finish()  # also: the request no longer runs, for interrupts
            if capturing and out is not None:  # None: nothing was printed
                rep.stdout_text, rep.stderr_text = out
        if result_bundle is not None or _rich_outputs or _rich_data:  # display(), figures, publish_data
            try:
                rep.rich_output = _rich.take(result_bundle)
            except BaseException as e:  # noqa: B036 - the reply goes out whatever its rich part does
                rep.stderr_text += f"\npcluster engine: the rich output could not be sent ({type(e).__name__}: {e})\n"
    rep.started = started
    rep.completed = time.time()
    return [_core.encode_reply(rep, bufs)] + bufs


_Reply = _core.engine_reply
_rich_outputs, _rich_data = _rich.outputs, _rich.data  # emptied in place by _rich.take
_ENGINE = _core.reply_origin.engine
_NO_KIND = _core.error_kind.none
_UNMET = _core.error_kind.UnmetDependency
