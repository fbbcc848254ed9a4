"""IPython magics (%px, %%px, %autopx, %pxresult, %pxconfig) driven through a real
InteractiveShell against the shared job with 4 engines."""

import re
import sys
import threading
import time

import cloudpickle
import pytest

import pcluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IPython = pytest.importorskip("IPython")

from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

IDS = [0, 1, 2, 3]
PX_OPTIONS = ["--targets", "--block", "--noblock", "--stream", "--no-stream", "--local"]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def bare_shell(job):
    """A fresh InteractiveShell with `import pcluster` done (no client, no magics)."""
    if not job.running():
        pytest.fail(f"the shared pcluster job is gone\n{job.describe()}")
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    ok = sh.run_cell("import pcluster")
    assert ok.success
    yield sh
    for v in list(sh.user_ns.values()):
        if isinstance(v, pcluster.Client):
            v.close()
    InteractiveShell.clear_instance()


@pytest.fixture
def shell(bare_shell, job, capsys):
    """A shell with rc = pcluster.Client(job) and %load_ext pcluster done."""
    sh = bare_shell
    r = sh.run_cell(f"rc = pcluster.Client({str(job.path)!r}, timeout=10)")
    assert r.success, r.error_in_exec
    r = sh.run_cell("%load_ext pcluster")
    assert r.success, r.error_in_exec
    capsys.readouterr()
    return sh


def run(sh, capsys, code):
    """run_cell(code) -> (result, stdout+stderr shown)."""
    capsys.readouterr()
    result = sh.run_cell(code)
    out = capsys.readouterr()
    return result, out.out + out.err


def run_ok(sh, capsys, code):
    result, shown = run(sh, capsys, code)
    assert result.error_in_exec is None, f"{code!r} failed: {result.error_in_exec!r}\n{shown}"
    assert result.error_before_exec is None, f"{code!r}: {result.error_before_exec!r}\n{shown}"
    return result, shown


def rc_of(sh):
    return sh.user_ns["rc"]


def connect(sh, capsys, job, name="rc"):
    """A Client of the shared job, made in the shell as `name`."""
    return run_ok(sh, capsys, f"{name} = pcluster.Client({str(job.path)!r}, timeout=10)")


def pull(sh, name, targets=slice(None)):
    return rc_of(sh)[targets].pull(name, block=True)


def defined_on(sh, name):
    """For each engine, whether `name` is bound in its namespace."""
    flag = "_px_has_" + name
    rc_of(sh)[:].execute(f"{flag} = {name!r} in globals()", block=True)
    return rc_of(sh)[:].pull(flag, block=True)


def assert_usage_error(result, shown, *words):
    assert isinstance(result.error_in_exec, UsageError), (result.error_in_exec, shown)
    assert "UsageError" in shown
    for w in words:
        assert w in shown, (w, shown)


# --------------------------------------------------------------------------- loading
def test_load_ext_registers_the_magics(shell):
    line = shell.magics_manager.magics["line"]
    cell = shell.magics_manager.magics["cell"]
    for name in ("px", "autopx", "pxresult", "pxconfig"):
        assert name in line, name
    assert "px" in cell


def test_px_needs_an_open_client(bare_shell, job, capsys):
    sh = bare_shell
    connect(sh, capsys, job, "old")
    run_ok(sh, capsys, "%load_ext pcluster")
    run_ok(sh, capsys, "old.close()")
    result, shown = run(sh, capsys, "%px x_no_client = 1")
    assert_usage_error(result, shown, "no pcluster client")
    # connecting a client afterwards makes the same magics work
    connect(sh, capsys, job, "rc")
    run_ok(sh, capsys, "%px x_no_client = 2")
    assert pull(sh, "x_no_client") == [2] * 4


def test_px_uses_the_newest_client(bare_shell, job, capsys):
    sh = bare_shell
    connect(sh, capsys, job, "first")
    run_ok(sh, capsys, "%load_ext pcluster")
    connect(sh, capsys, job, "rc")
    run_ok(sh, capsys, "first.close()")  # the magics do not hold on to the first client
    run_ok(sh, capsys, "%px x_newest = 'n'")
    assert pull(sh, "x_newest") == ["n"] * 4


# --------------------------------------------------------------------------- %px / %%px
def test_px_import_then_later_use(shell, capsys):
    run_ok(shell, capsys, "%px import math as px_math_mod")
    assert "px_math_mod" not in shell.user_ns  # only the engines imported it
    result, shown = run_ok(shell, capsys, "%px px_root = px_math_mod.sqrt(16)")
    assert result.result is None  # blocking %px returns nothing to show locally
    assert pull(shell, "px_root") == [4.0] * 4
    assert defined_on(shell, "px_math_mod") == [True] * 4


def test_px_cell_on_a_slice_of_targets(shell, capsys):
    rc = rc_of(shell)
    rc[:].execute("px_only_01 = 'unset'", block=True)
    _, shown = run_ok(shell, capsys, "%%px --targets 0:2\npx_only_01 = 'ran'\nprint('ran here')")
    assert pull(shell, "px_only_01") == ["ran", "ran", "unset", "unset"]
    assert "[stdout:0] ran here" in shown
    assert "[stdout:1] ran here" in shown
    assert "[stdout:2]" not in shown and "[stdout:3]" not in shown


@pytest.mark.parametrize(
    "spec, expect",
    [
        ("all", [True, True, True, True]),
        ("1", [False, True, False, False]),
        ("1,3", [False, True, False, True]),
        ("[0, 2]", [True, False, True, False]),
        ("::2", [True, False, True, False]),
        ("2:", [False, False, True, True]),
    ],
)
def test_px_targets_forms(shell, capsys, spec, expect):
    rc = rc_of(shell)
    rc[:].execute("px_tgt_mark = False", block=True)
    run_ok(shell, capsys, f"%px --targets {spec} px_tgt_mark = True")
    assert pull(shell, "px_tgt_mark") == expect


def test_px_targets_equals_and_short_form(shell, capsys):
    rc = rc_of(shell)
    rc[:].execute("px_tgt_eq = 0", block=True)
    run_ok(shell, capsys, "%px --targets=3 px_tgt_eq = 3")
    run_ok(shell, capsys, "%px -t 0 px_tgt_eq = 10")
    assert pull(shell, "px_tgt_eq") == [10, 0, 0, 3]


def test_stdout_labels_per_engine(shell, capsys):
    run_ok(shell, capsys, "%px from pcluster.engine import engine_id as px_eid")
    _, shown = run_ok(shell, capsys, "%px print('hello from', px_eid)")
    for e in IDS:
        assert f"[stdout:{e}] hello from {e}\n" in shown, shown


def test_stdout_multiline_goes_under_the_label(shell, capsys):
    _, shown = run_ok(shell, capsys, "%%px --targets 2\nprint('line one')\nprint('line two')")
    assert "[stdout:2]\nline one\nline two\n" in shown, shown
    assert "[stdout:0]" not in shown


def test_stderr_is_labelled_and_goes_to_stderr(shell, capsys):
    capsys.readouterr()
    r = shell.run_cell("%%px --targets 1,2\nimport sys\nprint('to err', file=sys.stderr)\nprint('to out')")
    out = capsys.readouterr()
    assert r.success, r.error_in_exec
    for e in (1, 2):
        assert f"[stderr:{e}] to err" in out.err, out
        assert f"[stdout:{e}] to out" in out.out, out
    assert "to err" not in out.out


def test_execute_result_out_lines(shell, capsys):
    result, shown = run_ok(shell, capsys, "%%px\npx_val = 20\npx_val + 22")
    assert result.result is None
    for e in IDS:
        assert re.search(rf"^Out\[{e}:\d+\]: 42$", shown, re.M), shown
    # the value's repr is shown, per engine
    run_ok(shell, capsys, "%px from pcluster.engine import engine_id as px_eid2")
    _, shown = run_ok(shell, capsys, "%px f'engine-{px_eid2}'")
    for e in IDS:
        assert re.search(rf"^Out\[{e}:\d+\]: 'engine-{e}'$", shown, re.M), shown
    # a statement has no Out line
    _, shown = run_ok(shell, capsys, "%px px_stmt = 1")
    assert "Out[" not in shown


def test_execute_result_count_increases(shell, capsys):
    _, first = run_ok(shell, capsys, "%px --targets 0 1")
    _, second = run_ok(shell, capsys, "%px --targets 0 2")
    c1 = int(re.search(r"Out\[0:(\d+)\]: 1", first).group(1))
    c2 = int(re.search(r"Out\[0:(\d+)\]: 2", second).group(1))
    assert c2 > c1


def test_local_runs_here_too(shell, capsys):
    run_ok(shell, capsys, "%px --local px_local_v = 40 + 2")
    assert shell.user_ns["px_local_v"] == 42
    assert pull(shell, "px_local_v") == [42] * 4
    _, shown = run_ok(shell, capsys, "%%px --local --targets 3\npx_local_w = 'w'\nprint('both')")
    assert shell.user_ns["px_local_w"] == "w"
    assert pull(shell, "px_local_w", 3) == "w"
    assert "[stdout:3] both" in shown
    assert re.search(r"^both$", shown, re.M), shown  # the local run printed without a label


def test_noblock_then_pxresult(shell, capsys):
    result, shown = run_ok(
        shell, capsys, "%%px --noblock\nimport time\ntime.sleep(0.5)\nprint('nb done')\nnb_v = 6 * 7\nnb_v"
    )
    ar = result.result
    assert isinstance(ar, pcluster.AsyncResult)
    assert "[stdout:" not in shown  # nothing printed by the magic itself
    result, shown = run_ok(shell, capsys, "%pxresult")
    assert ar.done()
    for e in IDS:
        assert f"[stdout:{e}] nb done" in shown, shown
        assert re.search(rf"^Out\[{e}:\d+\]: 42$", shown, re.M), shown
    assert ar.successful()
    assert pull(shell, "nb_v") == [42] * 4


def test_noblock_line_magic_returns_async_result(shell, capsys):
    result, _ = run_ok(shell, capsys, "%px --noblock --targets 1 px_nbl = 'x'")
    ar = result.result
    assert isinstance(ar, pcluster.AsyncResult)
    assert ar.wait(30)
    assert ar.successful()
    assert pull(shell, "px_nbl", 1) == "x"


def test_pxresult_before_any_px_is_a_usage_error(shell, capsys):
    result, shown = run(shell, capsys, "%pxresult")
    assert_usage_error(result, shown, "%px")


def test_pxresult_raises_the_remote_error(shell, capsys):
    result, _ = run_ok(shell, capsys, "%%px --noblock --targets 2\nraise ValueError('late failure')")
    assert isinstance(result.result, pcluster.AsyncResult)
    result, shown = run(shell, capsys, "%pxresult")
    assert isinstance(result.error_in_exec, pcluster.RemoteError)
    assert "[2:execute] ValueError: late failure" in shown, shown


# --------------------------------------------------------------------------- streaming
class _TimedWriter:
    """A sys.stdout stand-in that records when each piece of text was written."""

    def __init__(self, inner):
        self.inner = inner
        self.chunks = []  # (time.monotonic(), text)
        self._lock = threading.Lock()

    def write(self, text):
        with self._lock:
            self.chunks.append((time.monotonic(), text))
        return self.inner.write(text)

    def flush(self):
        self.inner.flush()

    def isatty(self):
        return False

    @property
    def encoding(self):
        return getattr(self.inner, "encoding", "utf-8")

    def text(self):
        return "".join(t for _, t in self.chunks)

    def first_time(self, needle):
        """When text containing needle was written (the chunk in which it completed)."""
        acc = ""
        for t, text in self.chunks:
            acc += text
            if needle in acc:
                return t
        raise AssertionError(f"{needle!r} was never written; output was:\n{acc}")


LONG_CELL = "%%px {opts}\nimport time\nprint('early')\ntime.sleep(2)\nprint('late')"


def test_streamed_output_is_live(shell, capsys, monkeypatch):
    rec = _TimedWriter(sys.stdout)
    monkeypatch.setattr(sys, "stdout", rec)
    start = time.monotonic()
    r = shell.run_cell(LONG_CELL.format(opts="--targets 0:2"))
    end = time.monotonic()
    monkeypatch.undo()
    assert r.success, r.error_in_exec
    shown = rec.text()
    for e in (0, 1):
        assert f"[stdout:{e}] early" in shown, shown
        assert f"[stdout:{e}] late" in shown, shown
    t_early = rec.first_time("early")
    t_late = rec.first_time("late")
    assert end - start >= 2.0  # the cell did run for its 2 s
    # "early" was shown while the cell was still sleeping, not with the final result.
    assert t_late - t_early >= 1.0, (t_early - start, t_late - start)
    assert end - t_early >= 1.0


def test_no_stream_prints_at_the_end(shell, capsys, monkeypatch):
    rec = _TimedWriter(sys.stdout)
    monkeypatch.setattr(sys, "stdout", rec)
    start = time.monotonic()
    r = shell.run_cell(LONG_CELL.format(opts="--targets 1 --no-stream"))
    monkeypatch.undo()
    assert r.success, r.error_in_exec
    shown = rec.text()
    # one engine, all output at once: multi-line under one label
    assert "[stdout:1]\nearly\nlate\n" in shown, shown
    # nothing can have been printed before the 2 s sleep was over
    assert rec.first_time("early") - start >= 1.9


def test_pxconfig_no_stream_then_stream(shell, capsys, monkeypatch):
    run_ok(shell, capsys, "%pxconfig --no-stream")
    rec = _TimedWriter(sys.stdout)
    monkeypatch.setattr(sys, "stdout", rec)
    start = time.monotonic()
    r = shell.run_cell(LONG_CELL.format(opts="--targets 3"))
    monkeypatch.undo()
    assert r.success, r.error_in_exec
    shown = rec.text()
    assert "early" in shown and "late" in shown and "[stdout:3]" in shown, shown
    assert "[stdout:0]" not in shown
    assert rec.first_time("early") - start >= 1.9  # not streamed: shown after the sleep
    # --stream on the line wins over the default
    rec = _TimedWriter(sys.stdout)
    monkeypatch.setattr(sys, "stdout", rec)
    r = shell.run_cell(LONG_CELL.format(opts="--targets 3 --stream"))
    monkeypatch.undo()
    assert r.success, r.error_in_exec
    assert rec.first_time("late") - rec.first_time("early") >= 1.0


# --------------------------------------------------------------------------- errors
def test_composite_error_rendering(shell, capsys):
    result, shown = run(shell, capsys, "%%px\ndef px_inner():\n    return 1 / 0\npx_inner()")
    assert type(result.error_in_exec).__name__ == "CompositeError"
    for e in IDS:
        assert f"[{e}:execute] ZeroDivisionError" in shown, shown
    assert "return 1 / 0" in shown  # the engine's source line
    assert "magics.py" not in shown and "asyncresult.py" not in shown  # no client frames
    # the session goes on
    run_ok(shell, capsys, "%px px_after_error = 1")
    assert pull(shell, "px_after_error") == [1] * 4


def test_one_engine_error_is_a_remote_error(shell, capsys):
    result, shown = run(shell, capsys, "%%px --targets 2\ndef px_inner2():\n    return 1 / 0\npx_inner2()")
    assert type(result.error_in_exec).__name__ == "RemoteError"
    assert "[2:execute] ZeroDivisionError" in shown, shown
    assert "return 1 / 0" in shown
    for e in (0, 1, 3):
        assert f"[{e}:execute]" not in shown


def test_error_on_some_engines_shows_their_output(shell, capsys):
    code = (
        "%%px\nfrom pcluster.engine import engine_id as px_eid3\nprint('before', px_eid3)\n"
        "if px_eid3 % 2:\n    raise KeyError(px_eid3)"
    )
    result, shown = run(shell, capsys, code)
    err = result.error_in_exec
    assert type(err).__name__ == "CompositeError"
    assert sorted(e.engine_id for e in err.elist) == [1, 3]
    for e in IDS:
        assert f"[stdout:{e}] before {e}" in shown, shown
    assert "[1:execute] KeyError" in shown and "[3:execute] KeyError" in shown
    assert "[0:execute]" not in shown and "[2:execute]" not in shown


# --------------------------------------------------------------------------- %autopx
def test_autopx_on_and_off(shell, capsys):
    _, shown = run_ok(shell, capsys, "%autopx")
    assert "enabled" in shown
    _, shown = run_ok(shell, capsys, "ap_x = 5\nprint('auto', ap_x)")
    assert "ap_x" not in shell.user_ns  # ran on the engines, not here
    for e in IDS:
        assert f"[stdout:{e}] auto 5" in shown, shown
    _, shown = run_ok(shell, capsys, "ap_x * 2")
    for e in IDS:
        assert re.search(rf"^Out\[{e}:\d+\]: 10$", shown, re.M), shown
    # errors in autopx mode are remote errors
    result, shown = run(shell, capsys, "1 / 0")
    assert type(result.error_in_exec).__name__ == "CompositeError"
    assert "[0:execute] ZeroDivisionError" in shown
    # other magics and cell magics keep working locally while on
    run_ok(shell, capsys, "%%px --targets 1\nap_cellmagic = 1")
    _, shown = run_ok(shell, capsys, "%autopx")
    assert "disabled" in shown
    run_ok(shell, capsys, "ap_local = 7")
    assert shell.user_ns["ap_local"] == 7
    assert defined_on(shell, "ap_local") == [False] * 4
    assert pull(shell, "ap_x") == [5] * 4
    assert defined_on(shell, "ap_cellmagic") == [False, True, False, False]


def test_autopx_follows_pxconfig_targets(shell, capsys):
    rc = rc_of(shell)
    rc[:].execute("ap_tgt = 'no'", block=True)
    run_ok(shell, capsys, "%pxconfig --targets 1,2")
    run_ok(shell, capsys, "%autopx")
    run_ok(shell, capsys, "ap_tgt = 'yes'")
    run_ok(shell, capsys, "%autopx")
    assert pull(shell, "ap_tgt") == ["no", "yes", "yes", "no"]


# --------------------------------------------------------------------------- %pxconfig
def test_pxconfig_targets_and_noblock(shell, capsys):
    rc = rc_of(shell)
    rc[:].execute("cfg_v = 0", block=True)
    run_ok(shell, capsys, "%pxconfig --targets 1 --noblock")
    result, _ = run_ok(shell, capsys, "%px cfg_v = 1")
    ar = result.result
    assert isinstance(ar, pcluster.AsyncResult)
    assert ar.wait(30)
    assert pull(shell, "cfg_v") == [0, 1, 0, 0]
    # an option on the line overrides the default for that call only
    result, _ = run_ok(shell, capsys, "%px --block --targets 3 cfg_v = 3")
    assert result.result is None
    assert pull(shell, "cfg_v") == [0, 1, 0, 3]
    # back to all engines, blocking
    run_ok(shell, capsys, "%pxconfig --targets all --block")
    result, _ = run_ok(shell, capsys, "%px cfg_v = 9")
    assert result.result is None
    assert pull(shell, "cfg_v") == [9] * 4


def test_pxconfig_rejects_unknown_options_and_code(shell, capsys):
    result, shown = run(shell, capsys, "%pxconfig --local")
    assert_usage_error(result, shown, "--targets", "--noblock", "--no-stream")
    result, shown = run(shell, capsys, "%pxconfig --targets 1 some_code()")
    assert_usage_error(result, shown, "some_code")


# --------------------------------------------------------------------------- usage errors
def test_px_unknown_option_names_the_valid_ones(shell, capsys):
    result, shown = run(shell, capsys, "%px --bogus x = 1")
    assert_usage_error(result, shown, "--bogus", *PX_OPTIONS)
    result, shown = run(shell, capsys, "%%px --nonsense\nx = 1")
    assert_usage_error(result, shown, "--nonsense", *PX_OPTIONS)


def test_px_without_code_is_a_usage_error(shell, capsys):
    result, shown = run(shell, capsys, "%px")
    assert_usage_error(result, shown)
    result, shown = run(shell, capsys, "%px --targets 1")
    assert_usage_error(result, shown)


def test_px_cell_with_code_on_its_line_is_a_usage_error(shell, capsys):
    result, shown = run(shell, capsys, "%%px x_line = 1\nx_cell = 2")
    assert_usage_error(result, shown, "x_line")


def test_bad_targets_are_usage_errors(shell, capsys):
    result, shown = run(shell, capsys, "%px --targets one x = 1")
    assert_usage_error(result, shown, "--targets")
    result, shown = run(shell, capsys, "%px --targets 1:2:3:4 x = 1")
    assert_usage_error(result, shown, "--targets")
    result, shown = run(shell, capsys, "%px --targets")
    assert isinstance(result.error_in_exec, UsageError), shown


def test_unknown_engine_target_fails_cleanly(shell, capsys):
    result, shown = run(shell, capsys, "%px --targets 17 x_bad_engine = 1")
    assert result.error_in_exec is not None
    assert "17" in shown
    # and the session goes on
    run_ok(shell, capsys, "%px x_bad_engine = 2")
    assert pull(shell, "x_bad_engine") == [2] * 4


# --------------------------------------------------------------------------- activate()
def test_activate_on_a_subset(bare_shell, job, capsys):
    sh = bare_shell
    connect(sh, capsys, job, "rc")
    run_ok(sh, capsys, "rc[:].execute('act_v = None', block=True)")
    run_ok(sh, capsys, "rc[0:2].activate()")
    _, shown = run_ok(sh, capsys, "%px act_v = 'sub'\nprint('act')")
    assert pull(sh, "act_v") == ["sub", "sub", None, None]
    _, shown = run_ok(sh, capsys, "%px print('act')")
    assert "[stdout:0] act" in shown and "[stdout:1] act" in shown
    assert "[stdout:2]" not in shown and "[stdout:3]" not in shown
    # %%px and %autopx use the view too
    run_ok(sh, capsys, "%%px\nact_w = 'cell'")
    assert defined_on(sh, "act_w") == [True, True, False, False]
    run_ok(sh, capsys, "%autopx")
    run_ok(sh, capsys, "act_auto = 1")
    run_ok(sh, capsys, "%autopx")
    assert defined_on(sh, "act_auto") == [True, True, False, False]


def test_activate_with_a_suffix(bare_shell, job, capsys):
    sh = bare_shell
    connect(sh, capsys, job, "rc")
    run_ok(sh, capsys, "rc[:].execute('sfx_v = None', block=True)")
    run_ok(sh, capsys, "%load_ext pcluster")
    run_ok(sh, capsys, "rc[2:4].activate('_b')")
    line = sh.magics_manager.magics["line"]
    for name in ("px_b", "autopx_b", "pxresult_b", "pxconfig_b"):
        assert name in line, name
    assert "px_b" in sh.magics_manager.magics["cell"]
    run_ok(sh, capsys, "%px_b sfx_v = 'b'")
    assert pull(sh, "sfx_v") == [None, None, "b", "b"]
    # the plain %px still uses all engines
    run_ok(sh, capsys, "%px sfx_all = 1")
    assert defined_on(sh, "sfx_all") == [True] * 4
    _, shown = run_ok(sh, capsys, "%%px_b\nprint('from b')\n'B'")
    assert "[stdout:2] from b" in shown and "[stdout:3] from b" in shown
    assert "[stdout:0]" not in shown and "[stdout:1]" not in shown
    assert re.search(r"^Out\[2:\d+\]: 'B'$", shown, re.M), shown
    # each set of magics has its own last result
    result, shown = run(sh, capsys, "%pxresult")  # plain %px ran blocking: its last result is there
    assert result.error_in_exec is None, shown
    result, _ = run_ok(sh, capsys, "%px_b --noblock sfx_nb = 1")
    assert isinstance(result.result, pcluster.AsyncResult)
    run_ok(sh, capsys, "%pxresult_b")
    assert defined_on(sh, "sfx_nb") == [False, False, True, True]
    # %autopx_b sends cells to engines 2 and 3 only
    run_ok(sh, capsys, "%autopx_b")
    run_ok(sh, capsys, "sfx_auto = 1")
    run_ok(sh, capsys, "%autopx_b")
    assert "sfx_auto" not in sh.user_ns
    assert defined_on(sh, "sfx_auto") == [False, False, True, True]
    # %pxconfig_b changes only the _b magics
    run_ok(sh, capsys, "%pxconfig_b --targets 3")
    run_ok(sh, capsys, "%px_b sfx_cfg = 3")
    run_ok(sh, capsys, "%px sfx_cfg_all = 1")
    assert defined_on(sh, "sfx_cfg") == [False, False, False, True]
    assert defined_on(sh, "sfx_cfg_all") == [True] * 4


def test_activate_outside_ipython_is_an_error(job):
    InteractiveShell.clear_instance()
    with pcluster.Client(str(job.path), timeout=10) as c:
        with pytest.raises(RuntimeError, match="IPython"):
            c[:].activate()


def test_px_cell_out_stores_the_async_result(shell, capsys):
    """%%px -o/--out NAME (ipyparallel's): the AsyncResult goes into the user's namespace."""
    run_ok(shell, capsys, "%%px -o px_out --noblock\nimport time\ntime.sleep(0.2)\n6 * 7")
    ar = shell.user_ns["px_out"]
    assert isinstance(ar, pcluster.AsyncResult) and ar.get(30) == [None] * 4
    assert ar.execute_result == ["42"] * 4
    run_ok(shell, capsys, "%%px --out=px_out2 --targets 1\npx_o = 1")
    assert shell.user_ns["px_out2"].done()
    result, shown = run(shell, capsys, "%%px --out\npass")
    assert_usage_error(result, shown, "--out needs a variable name")
