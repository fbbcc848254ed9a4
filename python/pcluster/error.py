"""Exceptions raised by the pcluster client; remote failures keep the engine's traceback."""


class PclusterError(Exception):
    """Base class of pcluster's own errors."""


class NoJobError(PclusterError, TimeoutError):
    """No running job was found through the connection file."""


class JobEndedError(PclusterError, ConnectionError):
    """The job ended (or the connection to it was lost) while a result was awaited."""


class AuthenticationError(PclusterError, PermissionError):
    """The job refused the key from the connection file."""


class ResultUnavailable(PclusterError, LookupError):
    """A result asked for by id that the job does not hold: never submitted, dropped from the
    controller's kept results (PCLUSTER_RESULTS_KEEP / _MIB), purged, or too large to keep
    (PCLUSTER_RESULTS_ITEM_KIB). The message says which."""


class RemoteError(PclusterError):
    """An exception raised on an engine.

    ename/evalue are the remote exception's type name and message, traceback the remote
    traceback as text, engine_info a dict with at least 'engine_id' and 'method'.
    """

    def __init__(self, ename, evalue, traceback, engine_info=None):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}
        super().__init__(ename, evalue)

    def __reduce__(self):
        # Travels back from engines inside results (map(..., return_exceptions=True)).
        return (type(self), (self.ename, self.evalue, self.traceback, self.engine_info))

    @property
    def engine_id(self):
        return self.engine_info.get("engine_id")

    def raise_exception(self):
        """Raise this error (CompositeError: one of its engines' errors)."""
        raise self

    def _label(self):
        eid = self.engine_info.get("engine_id", "?")
        method = self.engine_info.get("method", "")
        return f"[{eid}:{method}]" if method else f"[{eid}]"

    def __str__(self):
        return f"{self._label()} {self.ename}: {self.evalue}"

    def __repr__(self):
        return f"<RemoteError {self}>"

    def render_traceback(self):
        """The remote traceback as a list of lines, headed by [engine:method] Ename: evalue."""
        head = f"{self._label()} {self.ename}: {self.evalue}"
        tb = self.traceback.rstrip("\n").splitlines() if self.traceback else []
        return [head] + tb

    # IPython shows this instead of the local traceback.
    def _render_traceback_(self):
        return self.render_traceback()

    def print_traceback(self):
        print("\n".join(self.render_traceback()))


class TaskError(RemoteError):
    """A load-balanced task the controller failed without running it (see the subclasses)."""


class DependencyError(TaskError):
    """A dependency failed (DependencyFailed), cannot be met (ImpossibleDependency), or is
    unknown (InvalidDependency)."""


class EngineError(RemoteError):
    """An engine failed as a process, not through the code it ran (ipyparallel's name)."""


# One exception class per error kind pcluster makes up itself, from the one table of error
# kinds in C++ (protocol/errors.hpp, exported as _core.error_kinds: name, bases, when). User
# exceptions raised on engines stay RemoteError, with ename their type's name.
_KIND_CLASSES = {}


def _make_kind_classes():
    import builtins

    from . import _core

    for kind, name, bases, doc in _core.error_kinds:
        base = tuple(globals().get(b) or getattr(builtins, b) for b in bases.split(","))
        cls = type(name, base, {"__doc__": doc[0].upper() + doc[1:] + ".", "__module__": __name__})
        globals()[name] = cls
        _KIND_CLASSES[kind] = cls


_make_kind_classes()


def from_reply(r, method):
    """The exception for an error reply, whoever made it (engine, controller, bridge, client):
    the one place where a reply becomes what the user sees."""
    from . import _core

    if r.origin == _core.reply_origin.engine:
        engine = r.engine
    elif r.origin == _core.reply_origin.client:
        engine = "client"
    else:
        engine = "controller" if r.engine < 0 else r.engine
    cls = _KIND_CLASSES.get(r.kind, RemoteError)
    return cls(r.ename, r.evalue, "".join(r.traceback), {"engine_id": engine, "method": method})


class CompositeError(RemoteError):
    """Errors from several engines; elist holds one RemoteError per failing engine. str() and
    render_traceback() show the first `tb_limit` (4, as ipyparallel) and count the rest: 64
    engines failing alike are one screen, not 64 tracebacks."""

    tb_limit = 4

    def __init__(self, message, elist):
        self.msg = message
        self.elist = list(elist)
        first = self.elist[0]
        super().__init__(first.ename, first.evalue, first.traceback, first.engine_info)

    def __reduce__(self):
        return (type(self), (self.msg, self.elist))

    def __str__(self):
        lines = [f"{self.msg}"]
        lines += [f"  {e}" for e in self.elist[: self.tb_limit]]
        if len(self.elist) > self.tb_limit:
            lines.append(f".... {len(self.elist) - self.tb_limit} more exceptions ...")
        return "\n".join(lines)

    def __repr__(self):
        return f"<CompositeError: {len(self.elist)} engine error(s)>"

    def render_traceback(self, excid=None):
        lines = [self.msg]
        chosen = self.elist[: self.tb_limit] if excid is None else [self.elist[excid]]
        for e in chosen:
            lines.append("")
            lines += e.render_traceback()
        if excid is None and len(self.elist) > self.tb_limit:
            lines += ["", f"... {len(self.elist) - self.tb_limit} more exceptions ..."]
        return lines

    def _render_traceback_(self):
        return self.render_traceback()

    def print_traceback(self, excid=None):
        print("\n".join(self.render_traceback(excid)))

    def raise_exception(self, excid=0):
        """Re-raise one of the engine errors (the first by default)."""
        raise self.elist[excid]
