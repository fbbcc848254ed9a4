"""IPython on an engine: IPython syntax in execute (%magics, %%cell magics, !cmd), display(), rich
execute results, matplotlib figures and publish_data - collected per request and sent back in
the reply's `rich_output` (docs/architecture.md, "IPython on the engines").

Plain Python never comes here: `_kernel` compiles a cell first and asks `ipython_source` only when
that raises SyntaxError, and asks `bundle` for a final expression's mimebundle only when its
class has a rich repr. The engine's IPython shell (an InteractiveShell whose user namespace is
the engine's `__main__.__dict__`) is built the first time one of these needs it, or when the
engine's code imports IPython itself (so IPython.display.display finds a shell); until then an
engine neither imports IPython nor pays for a shell.
"""

import __main__
import base64
import builtins
import importlib.machinery
import sys

import cloudpickle

from . import _core

# What the running request showed, in order ({"data": {mime: str}, "metadata": {...}}), and what
# it published with publish_data(). The kernel takes both at the end of each request (take()).
outputs = []
data = {}

_shell = None
_MAX = _core.setting("PCLUSTER_MAX_REPLY_RICH")

# Class attributes that make IPython show a value as more than its repr.
_REPRS = ("_repr_html_", "_repr_markdown_", "_repr_svg_", "_repr_png_", "_repr_jpeg_", "_repr_latex_",
          "_repr_json_", "_repr_javascript_", "_repr_pdf_", "_repr_mimebundle_", "_ipython_display_")


def shell_built():
    return _shell is not None


def shell():
    """The engine's IPython shell, built on first use (ImportError when IPython is missing)."""
    global _shell
    if _shell is None:
        _shell = _make_shell()
    return _shell


def _make_shell():
    _unwatch()  # before importing IPython: the watch would build a second shell
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class _Publisher(DisplayPublisher):
        """display() on an engine: kept for the request's reply instead of printed."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            outputs.append({"data": _jsonable(data), "metadata": dict(metadata or {})})

        def clear_output(self, wait=False):
            outputs.clear()

    class EngineShell(InteractiveShell):
        def init_display_pub(self):
            self.display_pub = _Publisher(parent=self, shell=self)
            self.configurables.append(self.display_pub)

        def enable_gui(self, gui=None):
            # %matplotlib inline lands here with gui 'inline'; an engine has no event loop for
            # windows (and nobody would see them).
            if gui not in (None, "inline", "agg"):
                raise UsageError(f"an engine has no GUI event loop for {gui!r}: use %matplotlib inline "
                                 f"(figures come back to the client as images)")

    cfg = Config()
    cfg.HistoryManager.enabled = False  # no sqlite file shared by every engine of the host
    cfg.InteractiveShell.colors = "NoColor"  # tracebacks travel as text
    return EngineShell.instance(config=cfg, user_module=__main__)


def _jsonable(bundle):
    """A mimebundle as Jupyter carries it: binary values (image/png ...) base64 text."""
    out = {}
    for mime, v in bundle.items():
        if isinstance(v, (bytes, bytearray, memoryview)):
            v = bytes(v)
            if mime.startswith("text/") or mime.endswith(("+xml", "/svg+xml")):
                v = v.decode("utf-8", "replace")
            else:
                v = base64.b64encode(v).decode("ascii")
        out[mime] = v
    return out


# --- IPython syntax ------------------------------------------------------------------------------
def ipython_source(code, err):
    """The Python IPython makes of `code`, which failed to compile with SyntaxError `err`: raises
    `err` again when IPython would change nothing (a plain syntax error) or is not installed.
    Builds the shell, since the transformed code calls get_ipython()."""
    if not any(c in code for c in "%!?"):  # no IPython syntax possible: do not even import it
        raise err
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        err.msg += " (IPython syntax such as %magics and !commands needs IPython installed on the engines)"
        raise err from None
    src = TransformerManager().transform_cell(code)
    if src.rstrip() == code.rstrip():
        raise err
    sh = shell()
    __main__.__dict__["get_ipython"] = sh.get_ipython  # view.clear() may have removed it
    return src


def pre_execute():
    if _shell is not None:
        _shell.events.trigger("pre_execute")


def post_execute():
    """After an execute, as IPython after a cell: %matplotlib inline shows the cell's figures."""
    if _shell is not None:
        _shell.events.trigger("post_execute")


# --- rich execute results ------------------------------------------------------------------------
_rich_types = {}  # class -> whether it has a rich repr (a dozen attribute misses cost 2 us a value)


def bundle(value):
    """The mimebundle {"data", "metadata"} of a cell's final value when IPython would show more
    than text/plain, else None. Without a shell, values whose class has no rich repr return at
    once."""
    if _shell is None:
        t = type(value)
        rich = _rich_types.get(t)
        if rich is None:
            if len(_rich_types) > 1024:
                _rich_types.clear()
            rich = _rich_types[t] = any(hasattr(t, name) for name in _REPRS)
        if not rich:
            return None
        try:
            shell()
        except ImportError:
            return None
    data_, md = _shell.display_formatter.format(value)
    if not data_ or set(data_) <= {"text/plain"}:
        return None
    return {"data": _jsonable(data_), "metadata": dict(md or {})}


# --- what goes back ------------------------------------------------------------------------------
def take(result_bundle=None):
    """The request's rich output as the reply's rich_output bytes (b"" when none), at most
    PCLUSTER_MAX_REPLY_RICH bytes: an output that does not fit is replaced by a text/plain note
    naming what was dropped and why (so a large image never fails the reply or vanishes
    silently). Empties outputs and data."""
    shown = list(outputs)
    published = dict(data)
    outputs.clear()
    data.clear()
    if not shown and not published and result_bundle is None:
        return b""
    room = _MAX - 200  # the dict around them
    rich = {}
    if result_bundle is not None:
        n = _size(result_bundle)
        if n <= room:
            rich["execute_result"] = result_bundle
            room -= n
        else:
            shown.append(_note("the result's rich output", result_bundle, n))
    if published:
        try:
            n = len(cloudpickle.dumps(published, protocol=5))
        except Exception as e:  # what the user published cannot travel: say so where they look
            shown.append(_text(f"publish_data: not sent, it cannot be pickled ({type(e).__name__}: {e})"))
        else:
            if n <= room:
                rich["data"] = published
                room -= n
            else:
                shown.append(_text(f"publish_data: {n} bytes not sent: a reply carries at most "
                                   f"PCLUSTER_MAX_REPLY_RICH={_MAX} bytes of rich output"))
    kept = []
    for o in shown:
        n = _size(o)
        if n > room:
            o = _note("display output", o, n)
            n = _size(o)
        kept.append(o)
        room -= n
    if kept:
        rich["outputs"] = kept
    return cloudpickle.dumps(rich, protocol=5)


def _size(o):
    try:
        return len(cloudpickle.dumps(o, protocol=5))
    except Exception:
        return _MAX + 1


def _text(s):
    return {"data": {"text/plain": s}, "metadata": {}}


def _note(what, o, n):
    mimes = ", ".join(sorted(o.get("data", {}))) or "no data"
    return _text(f"[{what} ({mimes}) of {n} bytes not sent: a reply carries at most "
                 f"PCLUSTER_MAX_REPLY_RICH={_MAX} bytes of rich output]")


# --- display() without an import, and IPython imported by the engine's code ----------------------
def display(*objs, **kwargs):
    """display() on an engine (IPython's, as on ipyparallel's engines where it is a builtin):
    builds the engine's shell on first use; what it shows comes back in ar.outputs."""
    shell()  # IPython's own display() replaces this builtin once the shell exists
    from IPython.display import display as ipython_display

    return ipython_display(*objs, **kwargs)


class _WatchIPython:
    """sys.meta_path finder: when the engine's code imports IPython (from IPython.display import
    display), the shell is built right after that import, so IPython's display() finds it rather
    than printing a repr. Leaves sys.meta_path once the shell exists."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "IPython" or _shell is not None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            try:
                shell()
            except Exception as e:  # IPython itself imported fine: display() then prints reprs
                print(f"pcluster engine: IPython's shell could not be built ({type(e).__name__}: {e}); "
                      f"display() shows text only", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def _unwatch():
    try:
        sys.meta_path.remove(_WatchIPython)
    except ValueError:
        pass


def start():
    """On an engine at start-up: display() as a builtin, and the import watch (unless IPython is
    already imported: then nothing to watch, the shell is built when first needed)."""
    builtins.__dict__.setdefault("display", display)
    if "IPython" not in sys.modules:
        sys.meta_path.insert(0, _WatchIPython)
