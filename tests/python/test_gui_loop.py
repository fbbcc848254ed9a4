"""Blocking calls from a GUI main thread: a Tk callback (root.after) does blocking requests on a
virtual X display (Xvfb) and gets its results; nothing it waits for runs on the GUI thread."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest

import pcluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

PYTHON = "/usr/bin/python3"
PKG = str(Path(pcluster.__file__).resolve().parent.parent)  # build/python (or wherever pcluster is)
MISSING = "install the Debian packages xvfb and python3-tk (apt-get install xvfb python3-tk)"

SCRIPT = textwrap.dedent(
    """
    import json, sys, time, tkinter
    import pcluster

    def whoami():
        from pcluster.engine import engine_id
        return engine_id

    def nap(s, v):
        import time
        time.sleep(s)
        return v

    rc = pcluster.Client(sys.argv[1], timeout=10)
    root = tkinter.Tk()
    results = {}
    ticks = []

    def tick():
        ticks.append(time.monotonic())
        root.after(20, tick)

    def work():
        try:
            dv = rc[:]
            results["apply_sync"] = dv.apply_sync(whoami)
            results["single"] = rc[2].apply_sync(whoami)
            results["async_get"] = dv.apply_async(nap, 0.5, "slept").get(timeout=10)
            results["map"] = dv.map_sync(lambda x: x * x, range(10))
            results["execute"] = dv.execute("gui_v = 41 + 1", block=True).get(10)
            results["pull"] = dv.pull("gui_v", block=True)
            results["tk_alive"] = root.winfo_exists()
        except BaseException as e:
            results["error"] = repr(e)
        finally:
            root.after(100, root.quit)

    root.after(50, work)
    root.after(10, tick)
    root.after(45000, root.quit)  # bound: never hang the test
    root.mainloop()
    results["ticks_after_work"] = len(ticks)
    rc.close()
    root.destroy()
    print("RESULTS " + json.dumps(results), flush=True)
    """
)


def _fail_missing(what):
    pytest.fail(f"{what} is missing: {MISSING}")


def _free_display():
    for n in range(42, 300):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    pytest.fail("no free X display number between :42 and :299")


@pytest.fixture
def xdisplay():
    xvfb = shutil.which("Xvfb")
    if not xvfb:
        _fail_missing("Xvfb")
    try:
        subprocess.run([PYTHON, "-c", "import tkinter"], check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError as e:
        _fail_missing(f"tkinter ({e.stderr.decode(errors='replace').strip()})")
    n = _free_display()
    proc = subprocess.Popen(
        [xvfb, f":{n}", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sock = Path(f"/tmp/.X11-unix/X{n}")
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")
                pytest.fail(f"Xvfb :{n} exited with status {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"Xvfb :{n} did not create {sock} within 30 s")
            time.sleep(0.05)
        yield f":{n}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        proc.stderr.close()


def test_blocking_calls_from_tk_main_thread_callback(job, xdisplay):
    if not job.running():
        pytest.fail(f"the shared pcluster job is gone\n{job.describe()}")
    env = dict(os.environ)
    env["DISPLAY"] = xdisplay
    env["PYTHONPATH"] = os.pathsep.join(p for p in [PKG, env.get("PYTHONPATH", "")] if p)
    env["PCLUSTER_NONINTERACTIVE"] = "1"
    try:
        proc = subprocess.run(
            [PYTHON, "-c", SCRIPT, str(job.path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the Tk program did not finish within 60 s (a blocking call hung the GUI thread?)\nstdout: {e.stdout}\nstderr: {e.stderr}")
    if "No module named 'tkinter'" in proc.stderr or "_tkinter" in proc.stderr and "ModuleNotFoundError" in proc.stderr:
        _fail_missing("tkinter")
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert lines, f"no results printed\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    res = json.loads(lines[-1][len("RESULTS "):])
    assert "error" not in res, f"a blocking call failed in the Tk callback: {res['error']}\nstderr: {proc.stderr}"
    assert res["apply_sync"] == [0, 1, 2, 3]
    assert res["single"] == 2
    assert res["async_get"] == ["slept"] * 4
    assert res["map"] == [x * x for x in range(10)]
    assert res["execute"] == [None] * 4
    assert res["pull"] == [42] * 4
    assert res["tk_alive"]
    # The main loop kept running after the callback returned (it then quit on schedule).
    assert res["ticks_after_work"] >= 1
