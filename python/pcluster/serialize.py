"""Pickling for the wire: one pickler for every payload (cloudpickle's, protocol 5, large
buffers out of band).

What travels how:
- functions, classes and lambdas that cannot be imported on the other side (defined in a script,
  IPython or a notebook: module __main__; closures; nested definitions) go by value: their code,
  and the values of the globals they name, as they are at the send;
- importable functions, classes and modules go by reference (the engine imports them);
- instances go as pickle makes them, with their class by value or by reference as above;
- large contiguous buffers (numpy arrays) are not copied into the stream: they travel as
  separate frame buffers (pickle protocol 5's buffer_callback).

Name resolution of a function that came by value (docs/architecture.md, "Serialization"): its
globals are a `Globals` dict holding what the sender sent with it; a name it did not send is
looked up, at each use, in the receiving process's __main__ namespace (on an engine: the
engine's namespace, where push and execute put names), then in builtins. Assignments to globals
inside the function (`global x; x = 1`) stay in that dict: a call does not write into the
engine's namespace. `interactive` makes a function run with the engine's namespace itself as its
globals, as ipyparallel's @interactive.
"""

import io
import pickle
import sys
import threading
import types
import weakref

import cloudpickle

try:
    from cloudpickle.cloudpickle import _extract_code_globals, _should_pickle_by_reference
except ImportError:  # another cloudpickle layout: no function cache, every call pickles anew
    _extract_code_globals = _should_pickle_by_reference = None

PROTOCOL = 5
_MISSING = object()
_INTERACTIVE = "_pcluster_interactive"


class Globals(dict):
    """The globals of a function that came by value: what was sent with it; lookups of names it
    did not send fall through to the receiving process's __main__ namespace, then builtins."""

    __slots__ = ()

    def __missing__(self, name):
        v = sys.modules["__main__"].__dict__.get(name, _MISSING)
        if v is _MISSING:
            v = _builtins.get(name, _MISSING)
            if v is _MISSING:
                raise KeyError(name)
        return v

    # globals().get(name) and `name in globals()` inside the function see what its names see
    # (builtins aside, as for any module's globals).
    def get(self, name, default=None):
        v = dict.get(self, name, _MISSING)
        return sys.modules["__main__"].__dict__.get(name, default) if v is _MISSING else v

    def __contains__(self, name):
        return dict.__contains__(self, name) or name in sys.modules["__main__"].__dict__


_builtins = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__


# ipyparallel's use_pickle(): functions defined in __main__ run with the engine's namespace as
# their globals (as @interactive), the way ipyparallel's default serialization treats them.
# Off (the default, ipyparallel's use_cloudpickle()): they take the values of the globals they name
# along. Process-wide, as ipyparallel's is; set through view.use_pickle() / use_cloudpickle().
_main_interactive = False


def set_main_interactive(on):
    """Whether functions of __main__ are sent as @interactive (view.use_pickle) or with the
    values of their globals (view.use_cloudpickle, the default)."""
    global _main_interactive
    if bool(on) != _main_interactive:
        _main_interactive = bool(on)
        _function_cache.clear()  # bytes made under the other rule


def _is_interactive(f):
    return f.__dict__.get(_INTERACTIVE) or (_main_interactive and f.__module__ == "__main__")


def interactive(f):
    """Decorator (ipyparallel's @interactive): f runs on the engine with the engine's namespace
    as its globals. Its globals are not sent; every name it uses is looked up there, and
    `global x; x = 1` inside it writes the engine's namespace. Works for functions of
    importable modules too (they are then sent by value)."""
    if not isinstance(f, types.FunctionType):
        raise TypeError(f"interactive decorates a function, not {type(f).__name__}")
    setattr(f, _INTERACTIVE, True)
    return f


def _interactive_function(code, name, defaults, kwdefaults, closure, qualname, doc):
    """Unpickles an @interactive function: its globals are the receiver's __main__ namespace."""
    f = types.FunctionType(code, sys.modules["__main__"].__dict__, name, defaults, closure)
    f.__kwdefaults__ = kwdefaults
    f.__qualname__ = qualname
    f.__doc__ = doc
    setattr(f, _INTERACTIVE, True)
    return f


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle's pickler, with the globals of by-value functions made `Globals` and
    @interactive functions sent without theirs."""

    def _function_getnewargs(self, func):
        # Functions sharing globals in one pickle share one Globals on the other side.
        key = id(func.__globals__)
        if type(self.globals_ref.get(key)) is not Globals:
            self.globals_ref[key] = Globals()
        return super()._function_getnewargs(func)

    def _function_reduce(self, obj):
        if _is_interactive(obj):
            return (_interactive_function, (obj.__code__, obj.__name__, obj.__defaults__, obj.__kwdefaults__,
                                            obj.__closure__, obj.__qualname__, obj.__doc__))
        return super()._function_reduce(obj)


class _Reusable:
    """A pickler and its stream, kept per thread: building a CloudPickler costs more than
    pickling a small message."""

    def __init__(self):
        self.stream = io.BytesIO()
        self.bufs = []
        self.busy = False
        self.pickler = _Pickler(self.stream, protocol=PROTOCOL, buffer_callback=self._buffer)

    def _buffer(self, b):
        self.bufs.append(b)


_local = threading.local()


def _pickle(obj):
    """(stream bytes, [PickleBuffer...]) of obj, by the one pickler."""
    r = getattr(_local, "r", None)
    if r is None or r.busy:  # first use in this thread, or a dumps inside a dumps
        r = _Reusable()
        if getattr(_local, "r", None) is None:
            _local.r = r
    r.busy = True
    s = r.stream
    try:
        r.pickler.dump(obj)
        return s.getvalue(), r.bufs
    finally:
        r.bufs = []
        r.pickler.clear_memo()
        r.pickler.globals_ref.clear()
        s.seek(0)
        s.truncate()
        r.busy = False


_PLAIN = frozenset([type(None), bool, int, float, complex, str, bytes])


def dumps(obj):
    """obj -> [stream, *out_of_band_buffers]. Large contiguous buffers (numpy arrays) are not
    copied into the stream; they travel as separate frame buffers."""
    if type(obj) in _PLAIN:  # no function or class inside: plain pickle is the same, and cheaper
        return [pickle.dumps(obj, protocol=PROTOCOL)]
    stream, bufs = _pickle(obj)
    return [stream] + [b.raw() for b in bufs]


def loads(bufs):
    """Inverse of dumps; the buffers are used in place (no copy)."""
    return pickle.loads(bufs[0], buffers=bufs[1:])


def checked_dumps(obj, what):
    """dumps that turns any pickling failure into a TypeError naming what could not be sent,
    raised before anything goes on the wire."""
    try:
        return dumps(obj)
    except Exception as e:  # pickling raises many types (TypeError, PicklingError, AttributeError)
        raise TypeError(f"cannot send {what} to the engines: it cannot be pickled ({type(e).__name__}: {e})") from e


# --- the function cache -------------------------------------------------------------------------
# A function sent again and again (a loop of apply_async(f, i)) is pickled once, when that cannot
# send a stale value: the cached bytes are reused only while f's code, defaults and the globals it
# names are the same objects, and only for a function whose named globals and defaults are all
# values that cannot change in place (numbers, strings, None, tuples of these, modules, importable
# functions and classes) and that has no closure and no attributes. Anything else - a list, a
# dict, an array, a function sent by value - is pickled again at every send.
_function_cache = weakref.WeakKeyDictionary()
_ATOMS = frozenset([type(None), bool, int, float, complex, str, bytes, type(Ellipsis), types.ModuleType,
                    types.BuiltinFunctionType])


def frozen(v):
    """Whether v cannot change without becoming another object (so identity says it is the same
    value), counting importable functions and classes, which travel by reference."""
    t = type(v)
    if t in _ATOMS:
        return True
    if t is tuple or t is frozenset:
        return all(frozen(x) for x in v)
    if t is types.FunctionType or isinstance(v, type):
        return _should_pickle_by_reference is not None and _should_pickle_by_reference(v)
    return False


def _names(code, _cache=weakref.WeakKeyDictionary()):
    names = _cache.get(code)
    if names is None:
        names = _cache[code] = tuple(sorted(_extract_code_globals(code)))
    return names


def _function_state(f):
    """What f's pickle is made of, as a tuple of objects compared by identity: code, defaults,
    keyword defaults (names and values), and the values of the globals its code names (not sent
    for an @interactive function)."""
    kw = f.__kwdefaults__
    state = (f.__code__, f.__defaults__) + (() if not kw else (*kw, *kw.values()))
    if _is_interactive(f):
        return state
    g = f.__globals__
    return state + tuple([g.get(n, _MISSING) for n in _names(f.__code__)])


def _cacheable(f, state):
    return (not f.__dict__ or f.__dict__ == {_INTERACTIVE: True}) and all(v is _MISSING or frozen(v) for v in state[1:])


def _same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is not y:
            return False
    return True


def _function_bytes(f):
    """The whole pickle of f in one bytes object: what f holds (an array as a default, a closure
    cell or a global it names) stays in the stream, since function bytes travel as one value."""
    stream, bufs = _pickle(f)
    if not bufs:
        return stream
    out = io.BytesIO()
    _Pickler(out, protocol=PROTOCOL).dump(f)
    return out.getvalue()


def dumps_function(f):
    """The pickle of f as bytes, from the cache when that is the same as pickling it now."""
    if _extract_code_globals is None or type(f) is not types.FunctionType or f.__closure__ is not None:
        return _function_bytes(f)
    hit = _function_cache.get(f)
    state = _function_state(f)
    if hit is not None and _same(hit[0], state):
        return hit[1]
    data = _function_bytes(f)
    if _cacheable(f, state):
        _function_cache[f] = (state, data)
    elif hit is not None:
        del _function_cache[f]
    return data


def checked_dumps_function(f):
    """dumps_function, with a failure turned into a TypeError naming the function."""
    try:
        return dumps_function(f)
    except Exception as e:
        what = getattr(f, "__name__", "the function")
        raise TypeError(f"cannot send {what} to the engines: it cannot be pickled ({type(e).__name__}: {e})") from e


# --- payloads: each packed and unpacked by one pair of functions ---
# A call (apply, a load-balanced task, map's function): (pickled f, args, kwargs or None).


def pack_call(f, args=(), kwargs=None):
    """Buffers of a call f(*args, **kwargs), f from the function cache. TypeError naming what
    cannot be pickled, before anything is sent."""
    fbytes = checked_dumps_function(f)
    if not args and not kwargs:
        return [pickle.dumps((fbytes, (), None), protocol=PROTOCOL)]
    return checked_dumps((fbytes, args, kwargs or None), f"the arguments of {getattr(f, '__name__', 'the function')}")


def unpack_call(bufs):
    """(function bytes, args, kwargs) of a packed call; kwargs is {} when there were none."""
    fbytes, args, kwargs = loads(bufs)
    return fbytes, args, kwargs or {}


# A chunk of a load-balanced map: (function bytes, items, single). single: items is a slice of
# one sequence (a range stays a range, an array slice goes without copies) and the engine calls
# f(x); otherwise items are argument tuples, f(*t).


def pack_chunk(fbytes, items, single):
    return checked_dumps((fbytes, items, bool(single)), "the mapped items")


def unpack_chunk(bufs):
    """(function bytes, items, single) of a packed map chunk."""
    return loads(bufs)
