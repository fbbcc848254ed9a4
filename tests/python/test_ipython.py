"""Remote errors in a real IPython shell: IPython shows the engine's traceback, not the client's."""

import sys

import cloudpickle
import pytest

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IPython = pytest.importorskip("IPython")  # Debian's python3-ipython, installed by scripts/install-deps.sh


@pytest.fixture
def shell(job):
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.run_cell(f"import pcluster; rc = pcluster.Client({str(job.path)!r})")
    yield sh
    sh.run_cell("rc.close()")
    InteractiveShell.clear_instance()


def test_ipython_shows_remote_traceback(shell, capsys):
    capsys.readouterr()
    result = shell.run_cell("rc[1].execute('def inner():\\n    return 1 / 0\\ninner()', block=True)")
    out = capsys.readouterr()
    shown = out.out + out.err
    assert result.error_in_exec is not None
    assert type(result.error_in_exec).__name__ == "RemoteError"
    assert "[1:execute] ZeroDivisionError" in shown
    assert "return 1 / 0" in shown  # the engine's source line
    assert "asyncresult.py" not in shown  # not the client's own frames


def test_ipython_shows_every_engine_of_a_composite_error(shell, capsys):
    capsys.readouterr()
    result = shell.run_cell("rc[:].apply_sync(lambda: undefined_name_xyz)")
    shown = "".join(capsys.readouterr())
    assert type(result.error_in_exec).__name__ == "CompositeError"
    for eid in range(4):
        assert f"[{eid}:apply] NameError" in shown
    # the session goes on
    ok = shell.run_cell("assert rc[:].apply_sync(lambda: 1) == [1, 1, 1, 1]")
    assert ok.success
