"""Progress bars for long waits: tqdm, a widget in Jupyter when ipywidgets is installed, plain
text on a terminal, nothing when output is not interactive or PCLUSTER_NONINTERACTIVE=1."""

import importlib.util
import sys

from . import _core


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
    if _core.setting("PCLUSTER_NONINTERACTIVE"):
        return False
    if in_kernel():
        return True
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


class bar:
    """Context manager: bar(total, desc, unit).update_to(n). Does nothing when bars are off."""

    def __init__(self, total, desc, unit="engine"):
        self._t = None
        if not enabled():
            return
        if in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
            try:
                from tqdm.notebook import tqdm as widget

                self._t = widget(total=total, desc=desc, unit=unit, leave=False)
                return
            except Exception:  # an ipywidgets tqdm cannot use: the text bar below
                self._t = None
        try:
            from tqdm import tqdm

            self._t = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
        except Exception:
            self._t = None  # no tqdm: waiting works without a bar

    def update_to(self, n):
        if self._t is not None and n > self._t.n:
            self._t.update(n - self._t.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._t is not None:
            self._t.close()
