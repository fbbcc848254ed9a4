"""Progress bars for long waits: tqdm, a widget in Jupyter when ipywidgets is installed, plain
text on a terminal, nothing when output is not interactive or PCLUSTER_NONINTERACTIVE=1."""

import importlib.util
import os
import sys


def in_kernel():
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        ip = ipython.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def enabled():
    if os.environ.get("PCLUSTER_NONINTERACTIVE", "") not in ("", "0"):
        return False
    if in_kernel():
        return True
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


class bar:
    """Context manager: bar(total, desc).update_to(n). Does nothing when bars are off."""

    def __init__(self, total, desc):
        self._t = None
        if not enabled():
            return
        try:
            if in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
                from tqdm.notebook import tqdm
            else:
                from tqdm import tqdm
            self._t = tqdm(total=total, desc=desc, unit="engine" if total else "it", leave=False, file=sys.stderr)
        except Exception:
            self._t = None  # no tqdm, or no display: waiting works without a bar

    def update_to(self, n):
        if self._t is not None and n > self._t.n:
            self._t.update(n - self._t.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._t is not None:
            self._t.close()
