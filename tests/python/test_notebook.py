"""pcluster in a Jupyter notebook: notebooks/interactive.ipynb executed by nbclient in a real
ipykernel against the shared job. The notebook runs once (a kernel start is slow); each test
checks the outputs of its own cells, found by cell id. Cells that fail leave an error output
(allow_errors) so that one failure does not hide the others."""

import datetime
import re
import sys
from pathlib import Path

import cloudpickle
import pytest

from conftest import execute_notebook

cloudpickle.register_pickle_by_value(sys.modules[__name__])

nbformat = pytest.importorskip("nbformat")  # Debian python3-nbformat
nbclient = pytest.importorskip("nbclient")  # Debian python3-nbclient (+ python3-ipykernel)

NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "interactive.ipynb"
IDS = [0, 1, 2, 3]


class _TimedClient(nbclient.NotebookClient):
    """Records, for every stream message, the kernel's send time (header date), so a test can
    tell output sent while a cell ran from output sent at its end."""

    def __init__(self, nb, **kw):
        super().__init__(nb, **kw)
        self.stream_times = {}  # cell index -> [(datetime, name, text)]

    def process_message(self, msg, cell, cell_index):
        if msg.get("msg_type") == "stream":
            date = msg["header"].get("date")
            if isinstance(date, str):
                date = datetime.datetime.fromisoformat(date.replace("Z", "+00:00"))
            c = msg["content"]
            self.stream_times.setdefault(cell_index, []).append((date, c.get("name"), c.get("text", "")))
        return super().process_message(msg, cell, cell_index)


class Executed:
    def __init__(self, nb, client):
        self.nb = nb
        self.client = client
        self.index = {c.get("id"): i for i, c in enumerate(nb.cells)}

    def cell(self, cid):
        return self.nb.cells[self.index[cid]]

    def outputs(self, cid):
        return self.cell(cid).outputs

    def errors(self, cid):
        return [o for o in self.outputs(cid) if o.output_type == "error"]

    def stream(self, cid, name="stdout"):
        return "".join(o.text for o in self.outputs(cid) if o.output_type == "stream" and o.name == name)

    def results(self, cid):
        return [o.data.get("text/plain", "") for o in self.outputs(cid) if o.output_type == "execute_result"]

    def describe(self, cid):
        lines = [f"cell {cid!r}:"]
        for o in self.outputs(cid):
            if o.output_type == "stream":
                lines.append(f"  stream {o.name}: {o.text!r}")
            elif o.output_type == "error":
                lines.append(f"  error {o.ename}: {o.evalue}")
                lines += ["    " + ansi_free(t) for t in o.traceback]
            else:
                lines.append(f"  {o.output_type}: {dict(o.get('data', {}))!r}")
        return "\n".join(lines)

    def assert_no_error(self, cid):
        assert not self.errors(cid), self.describe(cid)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ansi_free(text):
    return _ANSI.sub("", text)


@pytest.fixture(scope="module")
def executed(job):
    """The notebook, executed once against the shared job."""
    if not job.running():
        pytest.fail(f"the shared pcluster job is gone\n{job.describe()}")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = execute_notebook(nb, job, NOTEBOOK.parent, _TimedClient)
    return Executed(nb, client)


def test_kernel_connects(executed):
    executed.assert_no_error("connect")
    assert executed.stream("connect") == f"ids {IDS}\n"


def test_blocking_apply_inside_the_kernels_event_loop(executed):
    executed.assert_no_error("sync-apply")
    out = executed.stream("sync-apply")
    assert "loop running: True" in out, executed.describe("sync-apply")  # the premise of the test
    assert f"sync {[(e, 42) for e in IDS]}" in out, executed.describe("sync-apply")
    assert "already running" not in executed.stream("sync-apply", "stderr")


def test_top_level_await(executed):
    executed.assert_no_error("await-apply")
    assert executed.stream("await-apply") == f"await {[(e, 10) for e in IDS]} AsyncResult\n"


def test_load_ext_and_px_print(executed):
    for cid in ("load-ext", "px-import", "px-print"):
        executed.assert_no_error(cid)
    assert executed.stream("px-import") == ""
    out = executed.stream("px-print")
    for e in IDS:
        assert f"[stdout:{e}] px says {e}\n" in out, executed.describe("px-print")


def test_px_execute_result_lines(executed):
    executed.assert_no_error("px-result")
    out = executed.stream("px-result")
    assert re.search(r"^Out\[1:\d+\]: 11$", out, re.M), executed.describe("px-result")
    assert re.search(r"^Out\[2:\d+\]: 21$", out, re.M), executed.describe("px-result")
    assert "Out[0" not in out and "Out[3" not in out
    assert executed.results("px-result") == []  # a blocking %%px cell has no value of its own


def test_px_output_is_live(executed):
    executed.assert_no_error("px-live")
    out = executed.stream("px-live")
    for e in (0, 1):
        assert f"[stdout:{e}] early {e}" in out, executed.describe("px-live")
        assert f"[stdout:{e}] late {e}" in out, executed.describe("px-live")
    assert "[stdout:2]" not in out and "[stdout:3]" not in out
    # "early" reached the notebook in a message the kernel sent well before the one with "late"
    times = executed.client.stream_times.get(executed.index["px-live"], [])
    acc, t_early, t_late = "", None, None
    for date, name, text in times:
        acc += text if name == "stdout" else ""
        if t_early is None and "early 1" in acc and "early 0" in acc:
            t_early = date
        if t_late is None and "late 1" in acc and "late 0" in acc:
            t_late = date
    assert t_early is not None and t_late is not None, times
    assert (t_late - t_early).total_seconds() >= 0.7, times


def test_noblock_and_pxresult(executed):
    executed.assert_no_error("px-noblock")
    executed.assert_no_error("pxresult")
    assert any("AsyncResult" in r for r in executed.results("px-noblock")), executed.describe("px-noblock")
    out = executed.stream("pxresult")
    assert "[stdout:3] background 3\n" in out, executed.describe("pxresult")
    assert re.search(r"^Out\[3:\d+\]: 'nb-3'$", out, re.M), executed.describe("pxresult")


def test_remote_error_caught_and_printed(executed):
    executed.assert_no_error("caught-error")
    out = executed.stream("caught-error")
    assert f"caught CompositeError {IDS}" in out, executed.describe("caught-error")
    for e in IDS:
        assert f"[{e}:apply] ZeroDivisionError" in out, executed.describe("caught-error")


def test_px_error_shows_the_remote_traceback(executed):
    errors = executed.errors("px-error")
    assert len(errors) == 1, executed.describe("px-error")
    err = errors[0]
    assert err.ename == "RemoteError", executed.describe("px-error")
    tb = "\n".join(ansi_free(t) for t in err.traceback)
    assert "[2:execute] ZeroDivisionError" in tb, tb
    assert "return 1 / 0" in tb, tb  # the engine's source line
    assert "magics.py" not in tb and "asyncresult.py" not in tb, tb
    # and the kernel goes on
    executed.assert_no_error("after-error")
    assert executed.stream("after-error") == "after [10, 20]\n"


def test_close(executed):
    executed.assert_no_error("close")
    assert executed.stream("close") == "closed\n"
