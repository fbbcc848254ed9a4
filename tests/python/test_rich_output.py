"""Engines speak IPython (issue 12, requirement 5): IPython syntax in execute and %px (%timeit,
!cmd, %%time, %matplotlib inline), display(), rich execute results, matplotlib figures and
publish_data coming back as mimebundles (ar.outputs, ar.data, ar.execute_result.data,
display_outputs), the magics' --group-outputs / --verbose / view.block, and a real notebook
(nbclient) where a figure made on the engines arrives as image/png. Real jobs, a real
InteractiveShell, a real ipykernel."""

import base64
import re
import sys
from pathlib import Path

import cloudpickle
import pytest

import pcluster
from conftest import execute_notebook

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IPython = pytest.importorskip("IPython")  # on the engines too: the same interpreter
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

IDS = [0, 1, 2, 3]
LONG = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _engine_state():
    """On an engine: (IPython imported, the engine's IPython shell built)."""
    import sys as _sys

    from pcluster import _rich

    return "IPython" in _sys.modules, _rich.shell_built()


# --------------------------------------------------------------------------- the fast path
def test_plain_python_builds_no_shell_and_big_output_is_a_note(start_job):
    """Plain Python (silent or not, values, applies, even a syntax error without IPython syntax)
    neither imports IPython nor builds the shell; the first IPython syntax does. A job of its
    own, so no other test built the shell before; with a small PCLUSTER_MAX_REPLY_RICH, an image
    over it comes back as a note saying so."""
    j = start_job(3, env={"PCLUSTER_MAX_REPLY_RICH": "50000"})
    with pcluster.Client(str(j.path), timeout=10) as rc:
        dv = rc[:]
        dv.execute("a = 1\nb = [a] * 3", block=True)
        assert dv.execute("b", silent=False, block=True).execute_result == ["[1, 1, 1]"] * 2
        assert dv.execute("import numpy as np; np.arange(3)", silent=False, block=True).execute_result == ["array([0, 1, 2])"] * 2
        assert dv.apply_sync(lambda x: x + 1, 1) == [2, 2]
        with pytest.raises(pcluster.CompositeError) as e:
            dv.execute("x = (", block=True)
        assert "SyntaxError" in str(e.value), e.value
        assert dv.execute("a", silent=False, block=True).outputs == [[], []]
        assert dv.apply_sync(_engine_state) == [(False, False)] * 2

        ar = dv.execute("%timeit -n1 -r1 pass", block=True)
        assert all("loop" in s for s in ar.stdout), ar.stdout
        assert dv.apply_sync(_engine_state) == [(True, True)] * 2

        # over the bound: the display output becomes a text/plain note naming it
        ar = rc[0].execute("from IPython.display import Image, display\n"
                           "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + bytes(100_000), format='png'))\n"
                           "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + bytes(100), format='png'))", block=True)
        big, small = ar.outputs
        assert list(big["data"]) == ["text/plain"], big
        assert "not sent" in big["data"]["text/plain"] and "PCLUSTER_MAX_REPLY_RICH=50000" in big["data"]["text/plain"]
        assert "image/png" in big["data"]["text/plain"]
        assert base64.b64decode(small["data"]["image/png"]).startswith(PNG_MAGIC)


def test_display_without_import_is_a_builtin(start_job):
    """display() needs no import on an engine (ipyparallel's engines have it as a builtin); the
    first call builds the shell."""
    j = start_job(3)
    with pcluster.Client(str(j.path), timeout=10) as rc:
        assert rc[:].apply_sync(_engine_state) == [(False, False)] * 2
        ar = rc[0].execute("display({'k': 1})", block=True)
        assert ar.outputs == [{"data": {"text/plain": "{'k': 1}"}, "metadata": {}}]
        assert rc[0].apply_sync(_engine_state) == (True, True)
        # importing IPython in the engine's code builds the shell right away, so IPython's own
        # display() (not the builtin) publishes rather than printing a repr
        ar = rc[1].execute("from IPython.display import HTML, display as d\nd(HTML('<p>w</p>'))", block=True)
        assert ar.stdout == "" and ar.outputs[0]["data"]["text/html"] == "<p>w</p>", (ar.stdout, ar.outputs)
        assert rc[1].apply_sync(_engine_state) == (True, True)


# --------------------------------------------------------------------------- IPython syntax
def test_line_magic_shell_escape_and_cell_magic(rc):
    dv = rc[:]
    ar = dv.execute("%timeit -n1 -r1 pass", block=True)
    assert all(re.search(r"per loop .*1 run, 1 loop each", s) for s in ar.stdout), ar.stdout

    ar = dv.execute("!echo hi from $HOSTNAME_UNSET_X", silent=False, block=True)
    assert all(s.strip().startswith("hi from") for s in ar.stdout), ar.stdout
    ar = dv.execute("files = !echo one; echo two\nlen(files)", silent=False, block=True)
    assert ar.execute_result == ["2"] * 4

    ar = dv.execute("%%time\nt_sq = [i * i for i in range(10)]\nsum(t_sq)", silent=False, block=True)
    assert all("Wall time" in s for s in ar.stdout), ar.stdout
    assert ar.execute_result == ["285"] * 4
    assert dv.pull("t_sq", block=True) == [[i * i for i in range(10)]] * 4  # ran in the engine's namespace


def test_error_in_ipython_syntax_is_a_remote_error_quoting_the_line(rc):
    with pytest.raises(pcluster.RemoteError) as e:
        rc[1].execute("z_before = 1\n%timeit -n1 -r1 1 / 0\n", block=True)
    err = e.value
    assert err.ename == "ZeroDivisionError"
    assert "%timeit -n1 -r1 1 / 0" in err.traceback, err.traceback  # the user's line, not the transformed one
    assert rc[1].pull("z_before", block=True) == 1
    with pytest.raises(pcluster.RemoteError) as e:
        rc[1].execute("%this_magic_does_not_exist", block=True)
    assert "UsageError" in e.value.ename or "this_magic_does_not_exist" in str(e.value), e.value


# --------------------------------------------------------------------------- rich output
def test_display_html_comes_back_as_mimebundles(rc):
    dv = rc[:]
    ar = dv.execute("from IPython.display import HTML, display\n"
                    "from pcluster.engine import engine_id\n"
                    "print('before')\n"
                    "display(HTML(f'<b>{engine_id}</b>'), metadata={'isolated': True})\n"
                    "display(HTML('<i>second</i>'))", block=True)
    assert ar.stdout == ["before\n"] * 4
    outs = ar.outputs
    assert len(outs) == 4
    for e, o in zip(IDS, outs):
        assert [x["data"]["text/html"] for x in o] == [f"<b>{e}</b>", "<i>second</i>"]
        assert o[0]["data"]["text/plain"].startswith("<IPython.core.display.HTML")
        assert o[0]["metadata"] == {"isolated": True}
    assert rc[2].execute("display(HTML('x'))", block=True).outputs == [{"data": {"text/plain": "<IPython.core.display.HTML object>", "text/html": "x"}, "metadata": {}}]
    assert [m["outputs"] for m in ar.metadata] == outs
    # what was displayed before an error still comes back, with the error
    ar = rc[3].execute("display(HTML('<b>before the error</b>'))\n1 / 0", block=False)
    with pytest.raises(pcluster.RemoteError, match="ZeroDivisionError"):
        ar.get(LONG)
    assert [o["data"]["text/html"] for o in ar.outputs] == ["<b>before the error</b>"]


class Rich:
    """A value with rich reprs: defined here, it travels by value."""

    def __repr__(self):
        return "Rich()"

    def _repr_html_(self):
        return "<table><tr><td>rich</td></tr></table>"

    def _repr_png_(self):
        return PNG_MAGIC + b"tiny"


def test_rich_execute_result(rc):
    dv = rc[0:2]
    dv.push({"Rich": Rich}, block=True)
    ar = dv.execute("Rich()", silent=False, block=True)
    assert ar.execute_result == ["Rich()", "Rich()"]  # the repr, as always
    for r in ar.execute_result:
        assert r.data["text/plain"] == "Rich()"
        assert r.data["text/html"] == "<table><tr><td>rich</td></tr></table>"
        assert base64.b64decode(r.data["image/png"]) == PNG_MAGIC + b"tiny"
        assert r._repr_mimebundle_()[0] == r.data
    assert ar.outputs == [[], []]  # a result is not a display output
    plain = rc[0].execute("40 + 2", silent=False, block=True).execute_result
    assert plain == "42" and plain.data == {"text/plain": "42"}


def test_matplotlib_inline_figure_is_image_png(rc):
    dv = rc[1:3]
    ar = dv.execute("%matplotlib inline\n"
                    "import matplotlib.pyplot as plt\n"
                    "fig_lines = plt.plot([0, 1, 2], [2, 0, 1])", block=True)
    for outs in ar.outputs:
        assert len(outs) == 1, outs
        png = base64.b64decode(outs[0]["data"]["image/png"])
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
        assert outs[0]["data"]["text/plain"].startswith("<Figure")
    # shown once, at the end of the cell that drew it: the next cell shows nothing
    assert dv.execute("fig_done = 1", block=True).outputs == [[], []]
    # two figures in one cell: two images, in order
    ar = rc[1].execute("plt.figure(); plt.plot([1]); plt.figure(); plt.bar([1], [2])", block=True)
    assert [list(o["data"]) for o in ar.outputs] == [["text/plain", "image/png"]] * 2


def test_publish_data_is_ar_data(rc):
    def work():
        from pcluster.datapub import publish_data
        from pcluster.engine import engine_id

        publish_data({"step": 1})
        publish_data({"step": 2, "engine": engine_id})
        return "done"

    ar = rc[0:2].apply_async(work)
    assert ar.get(LONG) == ["done", "done"]
    assert ar.data == [{"step": 2, "engine": 0}, {"step": 2, "engine": 1}]
    with pytest.raises(RuntimeError, match="on an engine"):
        from pcluster.datapub import publish_data

        publish_data({"x": 1})


def test_display_outputs_as_text_outside_ipython(rc, capsys):
    ar = rc[0:2].execute("print('out')\ndisplay(HTML('<b>h</b>'))\n'val'", silent=False, block=False)
    assert ar.wait_for_output(LONG) is True
    capsys.readouterr()
    ar.display_outputs()  # by type: all stdout, then the outputs, then the results
    shown = capsys.readouterr().out
    assert shown == ("[stdout:0] out\n[stdout:1] out\n"
                     "[output:0] <IPython.core.display.HTML object>\n[output:1] <IPython.core.display.HTML object>\n"
                     "Out[0]: 'val'\nOut[1]: 'val'\n"), shown
    ar.display_outputs("engine")
    shown = capsys.readouterr().out
    assert shown.startswith("[stdout:0] out\n[output:0] <IPython.core.display.HTML object>\nOut[0]: 'val'\n[stdout:1]"), shown
    ar.display_outputs(result_only=True)
    assert capsys.readouterr().out == "Out[0]: 'val'\nOut[1]: 'val'\n"
    with pytest.raises(ValueError, match="groupby"):
        ar.display_outputs("colour")


def test_stream_output(rc, capsys):
    ar = rc[2].execute("import time\nprint('first', flush=True)\ntime.sleep(1.2)\nprint('second')", block=False)
    capsys.readouterr()
    with ar.stream_output():
        ar.get(LONG)
    shown = capsys.readouterr().out
    assert "[stdout:2] first" in shown and "second" in shown, shown


# --------------------------------------------------------------------------- magics in IPython
@pytest.fixture
def shell(job):
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    assert sh.run_cell("import pcluster").success
    yield sh
    for v in list(sh.user_ns.values()):
        if isinstance(v, pcluster.Client):
            v.close()
    InteractiveShell.clear_instance()


def run_ok(sh, capsys, code):
    capsys.readouterr()
    r = sh.run_cell(code)
    out = capsys.readouterr()
    assert r.success, (code, r.error_in_exec, r.error_before_exec, out.out + out.err)
    return r, out.out + out.err


def test_client_in_ipython_registers_magics_and_px_shows_rich_output(shell, job, capsys):
    sh = shell
    assert "px" not in sh.magics_manager.magics["line"]
    run_ok(sh, capsys, f"rc = pcluster.Client({str(job.path)!r}, timeout=10)")  # no %load_ext
    assert "px" in sh.magics_manager.magics["line"] and "px" in sh.magics_manager.magics["cell"]
    _, shown = run_ok(sh, capsys, "%%px --targets 0,1\nfrom IPython.display import HTML\nprint('p')\ndisplay(HTML('<b>h</b>'))\nHTML('<i>r</i>')")
    # a terminal shell shows the text of rich output: stdout, then each engine's outputs, then Out
    lines = [ln for ln in shown.splitlines() if ln]
    assert sorted(lines[:2]) == ["[stdout:0] p", "[stdout:1] p"], shown  # streamed: as they come
    assert lines[2:6] == ["[output:0]", "<IPython.core.display.HTML object>", "[output:1]", "<IPython.core.display.HTML object>"], shown
    assert re.match(r"Out\[0:\d+\]: <IPython.core.display.HTML object>", lines[6]), shown
    _, shown = run_ok(sh, capsys, "%%px --targets 0,1 --group-outputs=engine\nprint('q')\ndisplay(HTML('<b>g</b>'))")
    lines = [ln for ln in shown.splitlines() if ln]
    assert sorted(lines[:2]) == ["[stdout:0] q", "[stdout:1] q"], shown  # streamed text first, then outputs
    assert lines[2:] == ["[output:0]", "<IPython.core.display.HTML object>", "[output:1]", "<IPython.core.display.HTML object>"], shown
    _, shown = run_ok(sh, capsys, "%%px --targets 0,1 --no-stream -e\nprint('q')\ndisplay(HTML('<b>g</b>'))")
    lines = [ln for ln in shown.splitlines() if ln]
    assert lines == ["[stdout:0] q", "[output:0]", "<IPython.core.display.HTML object>",
                     "[stdout:1] q", "[output:1]", "<IPython.core.display.HTML object>"], shown
    r = sh.run_cell("%%px --group-outputs=colour\npass")
    assert r.error_in_exec is not None and "--group-outputs takes" in str(r.error_in_exec)


def test_magics_follow_view_block_and_verbose(shell, job, capsys):
    sh = shell
    run_ok(sh, capsys, f"rc = pcluster.Client({str(job.path)!r}, timeout=10)")
    run_ok(sh, capsys, "dv = rc[2:4]; dv.activate('_nb'); dv.block = False")
    r, _ = run_ok(sh, capsys, "%px_nb px_nb_x = 5")
    assert isinstance(r.result, pcluster.AsyncResult)  # the view does not block: neither does %px
    r.result.get(LONG)
    r, _ = run_ok(sh, capsys, "%pxconfig_nb --block --verbose")
    assert sh.user_ns["dv"].block is True  # %pxconfig sets the view's block, as ipyparallel
    r, shown = run_ok(sh, capsys, "%px_nb px_nb_x")
    assert r.result is None
    assert "Parallel execution on engine(s): [2, 3]" in shown, shown
    assert re.search(r"Out\[2:\d+\]: 5", shown), shown
    run_ok(sh, capsys, "%pxconfig_nb --no-verbose --noblock")
    assert sh.user_ns["dv"].block is False
    r, shown = run_ok(sh, capsys, "%px_nb 1")
    assert "execution on engine" not in shown and isinstance(r.result, pcluster.AsyncResult)
    r.result.get(LONG)
    _, shown = run_ok(sh, capsys, "%pxresult_nb --group-outputs=order")
    assert re.search(r"Out\[2:\d+\]: 1", shown), shown


# --------------------------------------------------------------------------- a real notebook
NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "rich_output.ipynb"


@pytest.fixture(scope="module")
def notebook(job):
    """notebooks/rich_output.ipynb executed once by nbclient in a real ipykernel against the
    shared job: {cell id: its outputs}."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    execute_notebook(nb, job, NOTEBOOK.parent, timeout=120)
    return {c.get("id"): c.outputs for c in nb.cells if c.cell_type == "code"}


def _describe(outputs):
    lines = []
    for o in outputs:
        if o.output_type == "stream":
            lines.append(f"stream {o.name}: {o.text!r}")
        elif o.output_type == "error":
            lines.append(f"error {o.ename}: {o.evalue}\n" + "\n".join(o.traceback))
        else:
            lines.append(f"{o.output_type}: {sorted(o.get('data', {}))}")
    return "\n".join(lines)


def _rich(outputs, mime):
    return [o for o in outputs if o.output_type in ("display_data", "execute_result") and mime in o.get("data", {})]


def _stream(outputs):
    return "".join(o.text for o in outputs if o.output_type == "stream")


def test_notebook_figure_made_on_engines_arrives_as_image_png(notebook):
    for cid, outs in notebook.items():
        assert not [o for o in outs if o.output_type == "error"], f"cell {cid}:\n{_describe(outs)}"
    assert "px registered: True" in _stream(notebook["connect"])
    figs = _rich(notebook["figure"], "image/png")
    assert len(figs) == 2, _describe(notebook["figure"])
    for o in figs:
        assert base64.b64decode(o.data["image/png"]).startswith(PNG_MAGIC)
    assert sorted(o.metadata.get("engine") for o in figs) == [0, 1]
    assert "[output:0]" in _stream(notebook["figure"]) and "[output:1]" in _stream(notebook["figure"])


def test_notebook_display_and_rich_results_and_pxresult(notebook):
    html = _rich(notebook["html"], "text/html")
    assert sorted(o.data["text/html"] for o in html) == [f"<b>bold {e}</b>" for e in IDS], _describe(notebook["html"])
    res = _rich(notebook["rich-result"], "text/html")
    assert [o.data["text/html"] for o in res] == ["<i>rich result</i>"], _describe(notebook["rich-result"])
    assert re.match(r"Out\[2:\d+\]: ", res[0].data["text/plain"])
    assert len(_rich(notebook["pxresult"], "image/png")) == 1, _describe(notebook["pxresult"])
    shown = _rich(notebook["display-outputs"], "text/html")
    assert [o.data["text/html"] for o in shown] == ["<u>from display_outputs</u>"], _describe(notebook["display-outputs"])
