"""ipyparallel's `Reference`, `require` and `depend`: arguments that are the engine's own values,
functions that bring their imports with them, and functions that run only where a condition holds.

    dv.push(dict(a=np.arange(10)))
    dv.apply(np.sum, pcluster.Reference("a"))   # each engine sums its own `a`; nothing travels back

    @pcluster.require("numpy", "scipy.linalg", helper)
    def f(x): return numpy.dot(x, x)           # numpy imported on the engine before f runs

Both are plain picklable objects: a Reference travels as its name and becomes the engine's value
when the call's arguments are unpickled there (a NameError naming it if the engine has no such
name); a required function travels with its module names and objects, and imports them each
time it is called, into the function's own globals (never into the engine's namespace as a side
effect, the rule of docs/architecture.md "Serialization"). Unlike ipyparallel, `require` makes
no scheduling dependency: a task whose import fails fails with the ImportError (ipyparallel would
try another engine); pcluster's engines share one environment.

    @pcluster.depend(has_gpu)                 # or depend(f, *args, **kwargs)
    def train(x): ...
    lv.apply(train, x)                         # runs on an engine where has_gpu() is true

A depending function first calls its condition on the engine; where it is false it raises
UnmetDependency, and the controller tries the task on another engine (no retry is used); when
every engine it may run on has said so, the task fails with ImpossibleDependency. Called on a
DirectView, the UnmetDependency is that engine's error.
"""

import functools
import importlib
import types


def _engine_value(name):
    """The value of `name` (dotted: attributes of it) in the engine's namespace."""
    import __main__

    head, *rest = name.split(".")
    try:
        value = __main__.__dict__[head]
    except KeyError:
        raise NameError(f"pcluster.Reference({name!r}): name '{head}' is not defined on this engine") from None
    for attr in rest:
        value = getattr(value, attr)
    return value


class Reference:
    """An argument (or a value in push) that is the engine's own variable `name` when the call
    runs there, e.g. dv.apply(f, Reference('a')) calls f(a) with each engine's a."""

    def __init__(self, name):
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"a Reference names a variable (dotted names allowed), not {name!r}")
        self.name = name

    def __reduce__(self):
        return (_engine_value, (self.name,))

    def __repr__(self):
        return f"Reference({self.name!r})"


class _Requiring:
    """f with what it needs on the engine: modules imported, objects bound in its globals."""

    def __init__(self, f, modules, objects):
        self.f, self.modules, self.objects = f, modules, objects
        functools.update_wrapper(self, f)

    def __call__(self, *args, **kwargs):
        g = getattr(self.f, "__globals__", None)
        for m in self.modules:
            importlib.import_module(m)  # `import a.b` loads a.b and binds a
            if g is not None:
                top = m.split(".")[0]
                g[top] = importlib.import_module(top)
        if g is not None:
            g.update(self.objects)
        return self.f(*args, **kwargs)

    def __repr__(self):
        return f"<{getattr(self.f, '__name__', self.f)!r} requiring {', '.join(self.modules + list(self.objects))}>"


class _Depending:
    """f, run only where condition(*args, **kwargs) is true (elsewhere: UnmetDependency)."""

    def __init__(self, f, condition, args, kwargs):
        self.f, self.condition, self.args, self.kwargs = f, condition, args, kwargs
        functools.update_wrapper(self, f)

    def __call__(self, *args, **kwargs):
        if not self.condition(*self.args, **self.kwargs):
            from .error import UnmetDependency

            name = getattr(self.condition, "__name__", repr(self.condition))
            raise UnmetDependency("UnmetDependency", f"{name}{self.args or ''} is false on this engine", "", {})
        return self.f(*args, **kwargs)

    def __repr__(self):
        return f"<{getattr(self.f, '__name__', self.f)!r} depending on {getattr(self.condition, '__name__', self.condition)!r}>"


def depend(condition, *args, **kwargs):
    """Decorator: the function runs only on engines where condition(*args, **kwargs) is true
    (evaluated there, before each call); a load-balanced task goes to another engine where it is
    false, and fails with ImpossibleDependency when it is false everywhere it may run."""
    if not callable(condition):
        raise TypeError(f"depend takes a function (and its arguments), not {type(condition).__name__}")

    def decorate(f):
        if not callable(f):
            raise TypeError(f"depend decorates a function, not {type(f).__name__}")
        return _Depending(f, condition, args, kwargs)

    return decorate


def require(*required, **named):
    """Decorator: the function, wherever it runs, first imports the modules named (or given) and
    binds the functions given (by their __name__) and the keyword objects (by their keyword) in
    its globals."""
    modules, objects = [], dict(named)
    for r in required:
        if isinstance(r, str):
            modules.append(r)
        elif isinstance(r, types.ModuleType):
            modules.append(r.__name__)
        elif callable(r) and getattr(r, "__name__", None):
            objects[r.__name__] = r
        else:
            raise TypeError(f"require takes module names, modules and functions (objects by keyword), not {r!r}")

    def decorate(f):
        if not callable(f):
            raise TypeError(f"require decorates a function, not {type(f).__name__}")
        return _Requiring(f, modules, objects)

    return decorate
