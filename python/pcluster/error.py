"""Exceptions raised by the pcluster client; remote failures keep the engine's traceback."""


class PclusterError(Exception):
    """Base class of pcluster's own errors."""


class NoJobError(PclusterError, TimeoutError):
    """No running job was found through the connection file."""


class JobEndedError(PclusterError, ConnectionError):
    """The job ended (or the connection to it was lost) while a result was awaited."""


class AuthenticationError(PclusterError, PermissionError):
    """The job refused the key from the connection file."""


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


class TaskAborted(TaskError):
    """The task was aborted (ar.abort(), the client left, or the job shut down) before it ran."""


class TaskTimeout(TaskError):
    """The task waited longer than its timeout= for its dependencies."""


class DependencyError(TaskError):
    """A dependency failed (DependencyFailed), cannot be met (ImpossibleDependency), or is
    unknown (InvalidDependency)."""


_CONTROLLER_ERRORS = {
    "TaskAborted": TaskAborted,
    "TaskTimeout": TaskTimeout,
    "DependencyFailed": DependencyError,
    "ImpossibleDependency": DependencyError,
    "InvalidDependency": DependencyError,
    "EngineDied": TaskError,
    "InvalidTask": TaskError,
}


def controller_error(ename, evalue, method):
    """The exception for an error the controller made up (refusal, task failure)."""
    cls = _CONTROLLER_ERRORS.get(ename, RemoteError)
    return cls(ename, evalue, "", {"engine_id": "controller", "method": method})


class CompositeError(RemoteError):
    """Errors from several engines; elist holds one RemoteError per failing engine."""

    def __init__(self, message, elist):
        self.msg = message
        self.elist = list(elist)
        first = self.elist[0]
        super().__init__(first.ename, first.evalue, first.traceback, first.engine_info)

    def __reduce__(self):
        return (type(self), (self.msg, self.elist))

    def __str__(self):
        lines = [f"{self.msg}"]
        lines += [f"  {e}" for e in self.elist]
        return "\n".join(lines)

    def __repr__(self):
        return f"<CompositeError: {len(self.elist)} engine error(s)>"

    def render_traceback(self, excid=None):
        lines = [self.msg]
        chosen = self.elist if excid is None else [self.elist[excid]]
        for e in chosen:
            lines.append("")
            lines += e.render_traceback()
        return lines

    def _render_traceback_(self):
        return self.render_traceback()

    def print_traceback(self, excid=None):
        print("\n".join(self.render_traceback(excid)))

    def raise_exception(self, excid=0):
        """Re-raise one of the engine errors (the first by default)."""
        raise self.elist[excid]
