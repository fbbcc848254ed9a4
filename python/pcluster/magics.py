"""IPython magics, as in ipyparallel: %px, %%px, %autopx, %pxresult, %pxconfig.

Loaded by ``%load_ext pcluster``, or when a Client is made inside IPython and no %px exists yet
(they use the newest open Client's engines, all of them), or by ``view.activate()`` (they use
that view, and follow its ``block``). %px prints each engine's output labelled ``[stdout:3]``
while a long cell runs, then what the engines displayed (display(), figures: rich in Jupyter) and
the value of a cell's last expression as ``Out[3:1]: ...``, and raises a CompositeError that
IPython shows with every remote traceback.
"""

import re
import sys

from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class

from .display import GROUPINGS, print_stream

def parse_targets(text):
    """'all', '3', '0:4', '::2', '1,3', '[0, 2]' -> what Client views take."""
    t = text.strip().strip("[]()")
    if t in ("", "all", "*"):
        return "all"
    if ":" in t:
        parts = [int(p) if p.strip() else None for p in t.split(":")]
        if len(parts) > 3:
            raise UsageError(f"bad --targets {text!r}: a slice has at most start:stop:step")
        return slice(*parts)
    try:
        ids = [int(p) for p in re.split(r"[,\s]+", t) if p]
    except ValueError:
        raise UsageError(f"bad --targets {text!r}: use all, an engine id, a slice like 0:4, or ids like 1,3") from None
    return ids[0] if len(ids) == 1 else ids


class _Options:
    def __init__(self, targets, block, stream, local=False, groupby="type", out=None):
        self.targets, self.block, self.stream, self.local = targets, block, stream, local
        self.groupby = groupby  # how outputs are grouped (AsyncResult.display_outputs)
        self.out = out  # %%px -o name: the AsyncResult goes into the user's namespace as `name`


def _split_options(line, allowed):
    """Leading --options of a magic line, and the rest (the code, for %px)."""
    opts = {}
    rest = line
    while True:
        m = re.match(r"\s*(--?[A-Za-z][\w-]*)", rest)
        if not m:
            break
        name = m.group(1).lstrip("-").replace("-", "_")
        name = {"t": "targets", "o": "out", "e": "group_outputs=engine", "r": "group_outputs=order"}.get(name, name)
        if name.startswith("group_outputs=") and "group_outputs" in allowed:
            opts["group_outputs"] = name.split("=")[1]
            rest = rest[m.end():]
            continue
        if name not in allowed:
            raise UsageError(f"unknown option {m.group(1)}: this magic takes " + ", ".join("--" + a.replace("_", "-") for a in allowed))
        rest = rest[m.end():]
        if name == "targets":
            v = re.match(r"\s*=?\s*(\[[^\]]*\]|\S+)", rest)
            if not v:
                raise UsageError("--targets needs a value: all, an engine id, a slice like 0:4, or ids like 1,3")
            opts["targets"] = parse_targets(v.group(1))
            rest = rest[v.end():]
        elif name == "out":
            v = re.match(r"\s*=?\s*([A-Za-z_]\w*)", rest)
            if not v:
                raise UsageError("--out needs a variable name: %%px -o ar")
            opts["out"] = v.group(1)
            rest = rest[v.end():]
        elif name == "group_outputs":
            v = re.match(r"\s*=?\s*(\w+)", rest)
            if not v or v.group(1) not in GROUPINGS:
                raise UsageError("--group-outputs takes " + ", ".join(GROUPINGS))
            opts["group_outputs"] = v.group(1)
            rest = rest[v.end():]
        else:
            opts[name] = True
    return opts, rest.strip()


@magics_class
class ParallelMagics(Magics):
    """Magics bound to a view (view.activate()) or to the newest open Client's engines."""

    def __init__(self, shell, view=None, suffix=""):
        super().__init__(shell)
        self.view = view
        self.suffix = suffix
        self.targets = None  # None: the view's own targets
        self.block = None  # None: the view's block (%pxconfig --block/--noblock sets the view's)
        self.stream = True
        self.verbose = False
        self.last_result = None
        self._autopx = False
        self._count = 0
        self._register()

    # --- registration (names carry the suffix: view.activate('_a') gives %px_a) ---
    def _register(self):
        mm = self.shell.magics_manager
        s = self.suffix
        mm.register_function(self.px_line, "line", "px" + s)
        mm.register_function(self.px_cell, "cell", "px" + s)
        mm.register_function(self.pxresult, "line", "pxresult" + s)
        mm.register_function(self.pxconfig, "line", "pxconfig" + s)
        mm.register_function(self.autopx, "line", "autopx" + s)

    # --- the view the magics use ---
    def _view(self, targets):
        view = self.view
        if view is None:
            from .client import newest_client

            rc = newest_client()
            if rc is None:
                raise UsageError(
                    "no pcluster client: connect one first, e.g. rc = pcluster.Client() "
                    "(and rc[:].activate() to choose the engines %px uses)"
                )
            view = rc[:]
        t = targets if targets is not None else self.targets
        if t is not None:
            view = view.client[t] if t != "all" else view.client[:]
        return view

    def _options(self, line, allowed=("targets", "block", "noblock", "stream", "no_stream", "local", "group_outputs", "out")):
        opts, rest = _split_options(line, allowed)
        # No activated view (%load_ext, or the magics a Client registered): blocking, as the
        # view ipyparallel's Client activates then (views themselves start non-blocking).
        block = self.block if self.block is not None else self.view.block if self.view is not None else True
        if opts.get("block"):
            block = True
        if opts.get("noblock"):
            block = False
        stream = self.stream
        if opts.get("stream"):
            stream = True
        if opts.get("no_stream"):
            stream = False
        return _Options(opts.get("targets"), block, stream, opts.get("local", False), opts.get("group_outputs", "type"),
                        opts.get("out")), rest

    # --- %px / %%px ---
    def px_line(self, line):
        """%px [--targets T] [--block|--noblock] [--stream|--no-stream] [--local] code
        Runs code on the engines (all of the active view's by default). Code may use IPython
        syntax (%timeit, !cmd, %matplotlib inline) where the engines have IPython."""
        opts, code = self._options(line, ("targets", "block", "noblock", "stream", "no_stream", "local"))
        if not code:
            raise UsageError("%px needs code to run, e.g. %px import numpy as np")
        return self._run(code, opts)

    def px_cell(self, line, cell):
        """%%px [--targets T] [--block|--noblock] [--stream|--no-stream] [--local]
        [--group-outputs=type|engine|order] (-e: engine, -r: order) [-o/--out NAME]
        Runs the cell on the engines; --local also runs it here. What the engines displayed is
        shown after their printed output, grouped as AsyncResult.display_outputs(groupby)."""
        opts, rest = self._options(line)
        if rest:
            raise UsageError(f"%%px takes only options on its line, not {rest!r}")
        return self._run(cell, opts)

    def _run(self, code, opts):
        view = self._view(opts.targets)
        if self.verbose:
            t = view.targets
            print(f"{'Parallel' if opts.block else 'Async parallel'} execution on engine(s): {t}")
        if opts.local:
            self.shell.run_cell(code)
        ar = view.execute(code, silent=False, block=False)
        self._count += 1
        ar._px_count = self._count
        self.last_result = ar
        if opts.out:
            self.shell.user_ns[opts.out] = ar
        if not opts.block:
            return ar
        self._show(ar, opts.stream, opts.groupby)
        return None

    def _show(self, ar, stream, groupby="type"):
        try:
            while not ar.wait(0.1 if stream else None):
                if stream:
                    self._print_output(ar)
        except KeyboardInterrupt:
            print("interrupted: the engines keep running the cell; %pxresult shows its result when done")
            raise
        if stream:
            self._print_output(ar)
        else:
            ar._new_output()  # everything is shown below, each engine's output under one label
        # Then what the engines displayed and the values of their cells (an error: none), and
        # without streaming the whole output, grouped as display_outputs(groupby) does.
        ar._show_outputs(groupby, streams=not stream, count=getattr(ar, "_px_count", None))
        if not ar.successful():
            ar.get()  # raises the CompositeError / RemoteError, which IPython renders remotely

    @staticmethod
    def _print_output(ar):
        for engine, stream, text in ar._new_output():
            print_stream(stream, engine, text)

    # --- %pxresult, %pxconfig, %autopx ---
    def pxresult(self, line=""):
        """%pxresult [--group-outputs=type|engine|order]: waits for the last %px/%%px (--noblock)
        and shows its output, what it displayed (rich in Jupyter) and its result."""
        opts, rest = _split_options(line, ("group_outputs",))
        if rest:
            raise UsageError(f"%pxresult takes only --group-outputs, not {rest!r}")
        if self.last_result is None:
            raise UsageError("no %px result yet: run %px or %%px --noblock first")
        self._show(self.last_result, True, opts.get("group_outputs", "type"))

    def pxconfig(self, line):
        """%pxconfig [--targets T] [--block|--noblock] [--stream|--no-stream]
        [--verbose|--no-verbose]: defaults for %px. --block/--noblock set the activated view's
        block (which %px follows); --verbose prints where each %px runs."""
        opts, rest = _split_options(line, ("targets", "block", "noblock", "stream", "no_stream", "verbose", "no_verbose"))
        if rest:
            raise UsageError(f"%pxconfig takes only options, not {rest!r}")
        if "targets" in opts:
            self.targets = opts["targets"]
        for flag, value in (("block", True), ("noblock", False)):
            if opts.get(flag):
                if self.view is not None:
                    self.view.block = value
                else:
                    self.block = value
        if opts.get("stream"):
            self.stream = True
        if opts.get("no_stream"):
            self.stream = False
        if opts.get("verbose"):
            self.verbose = True
        if opts.get("no_verbose"):
            self.verbose = False

    def autopx(self, line=""):
        """%autopx: every following cell runs on the engines, until %autopx again."""
        transformers = self.shell.input_transformers_cleanup
        if self._autopx:
            if self._transform in transformers:
                transformers.remove(self._transform)
            self._autopx = False
            print("%autopx disabled")
        else:
            transformers.append(self._transform)
            self._autopx = True
            print("%autopx enabled: cells run on the engines; %autopx to stop")

    def _transform(self, lines):
        first = next((ln.strip() for ln in lines if ln.strip()), "")
        if first.startswith("%autopx") or first.startswith("%%"):
            return lines
        if not first:
            return lines
        return [f"%%px{self.suffix}\n"] + list(lines)


def load(shell, view=None, suffix=""):
    """Registers the magics with `shell`; returns the ParallelMagics instance."""
    return ParallelMagics(shell, view=view, suffix=suffix)


def load_if_in_ipython():
    """A Client made inside IPython or Jupyter registers %px and friends (on the newest Client's
    engines) unless some %px exists already, as ipyparallel's Client does. Outside IPython it
    costs a dict lookup: IPython is never imported here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and "px" not in shell.magics_manager.magics["line"]:
        load(shell)
