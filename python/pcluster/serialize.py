"""Pickling for the wire: protocol 5 with out-of-band buffers, cloudpickle for code."""

import pickle
import types
import weakref

import cloudpickle

try:
    from cloudpickle.cloudpickle import _extract_code_globals
except ImportError:  # another cloudpickle layout: no function cache, every call pickles anew
    _extract_code_globals = None

PROTOCOL = 5


def dumps(obj):
    """obj -> [stream, *out_of_band_buffers]. Large contiguous buffers (numpy arrays) are not
    copied into the stream; they travel as separate frame buffers."""
    bufs = []
    try:
        stream = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=bufs.append)
    except Exception:
        # Lambdas, closures and interactively defined classes need cloudpickle.
        bufs = []
        stream = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=bufs.append)
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


# Functions sent again and again (a loop of apply_async(f, i)) are pickled once. cloudpickle
# takes a function defined in __main__ by value: its code, defaults and the globals it names, so
# the cached bytes stay valid while those are the same objects. Each entry keeps the objects it
# was made from and compares them by identity; a function with a closure is never cached (its
# cells can be rebound without the function knowing). Mutating a global in place (a list the
# function reads) is not seen - as with any pickle, the engines get the value of the first send.
_function_cache = weakref.WeakKeyDictionary()
_MISSING = object()


def _names(code, _cache=weakref.WeakKeyDictionary()):
    names = _cache.get(code)
    if names is None:
        names = _cache[code] = tuple(sorted(_extract_code_globals(code)))
    return names


def _function_state(f):
    g = f.__globals__
    return (f.__code__, f.__defaults__, f.__kwdefaults__, f.__dict__ or None) + tuple(
        [g.get(n, _MISSING) for n in _names(f.__code__)]
    )


def _same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is not y:
            return False
    return True


def dumps_function(f):
    """cloudpickle of f as bytes, from the cache when f and what it names are unchanged."""
    if _extract_code_globals is None or type(f) is not types.FunctionType or f.__closure__ is not None:
        return cloudpickle.dumps(f, protocol=PROTOCOL)
    state = _function_state(f)
    hit = _function_cache.get(f)
    if hit is not None and _same(hit[0], state):
        return hit[1]
    data = cloudpickle.dumps(f, protocol=PROTOCOL)
    _function_cache[f] = (state, data)
    return data


def checked_dumps_function(f):
    """dumps_function, with a failure turned into a TypeError naming the function."""
    try:
        return dumps_function(f)
    except Exception as e:
        what = getattr(f, "__name__", "the function")
        raise TypeError(f"cannot send {what} to the engines: it cannot be pickled ({type(e).__name__}: {e})") from e


# --- payloads: each packed and unpacked by one pair of functions ---
# A call (apply, a load-balanced task, map's function): (cloudpickled f, args, kwargs or None).


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
