"""Pickling for the wire: protocol 5 with out-of-band buffers, cloudpickle for code."""

import pickle

import cloudpickle

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


def dumps_code(obj):
    """Like dumps, but always through cloudpickle (functions travel by value)."""
    bufs = []
    stream = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=bufs.append)
    return [stream] + [b.raw() for b in bufs]


def loads(bufs):
    """Inverse of dumps; the buffers are used in place (no copy)."""
    return pickle.loads(bufs[0], buffers=bufs[1:])


def checked_dumps(obj, what, code=False):
    """dumps that turns any pickling failure into a TypeError naming what could not be sent,
    raised before anything goes on the wire."""
    try:
        return dumps_code(obj) if code else dumps(obj)
    except Exception as e:  # pickling raises many types (TypeError, PicklingError, AttributeError)
        raise TypeError(f"cannot send {what} to the engines: it cannot be pickled ({type(e).__name__}: {e})") from e
