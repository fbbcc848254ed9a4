"""Engines die, the job lives: faults provoked for real (os._exit, SIGKILL from outside, SIGSEGV,
deaths in the middle of transfers and maps, two deaths, a death with another client attached,
the controller's death) and interrupts of running code. After each: the right errors, and the
survivors answer everything correctly. Every job here is started with recovery (the documented
way); each test that kills an engine starts a job of its own."""

import os
import signal
import threading
import time

import numpy as np
import pytest

import pcluster

from conftest import EXIT_TIMEOUT


def pid():
    return os.getpid()


def engine_id():
    import pcluster.engine

    return pcluster.engine.engine_id


def comm_sum():
    import pcluster.engine

    return pcluster.engine.comm.allreduce(1)


def nap(t, x=None):
    time.sleep(t)
    return x


def wait_for(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def assert_survivors_serve(rc, alive):
    """Every kind of request works on the survivors, with the right values."""
    assert rc.ids == alive
    dv = rc[:]
    dv.push(dict(survivor_x=7), block=True)
    assert dv.pull("survivor_x", block=True) == [7] * len(alive)
    assert dv.apply_sync(engine_id) == alive
    assert dv.map_sync(lambda v: v * 3, range(10)) == [v * 3 for v in range(10)]
    dv.scatter("survivor_part", np.arange(23), block=True)
    assert np.array_equal(dv.gather("survivor_part", block=True), np.arange(23))
    assert dv.apply_sync(comm_sum) == [len(alive)] * len(alive)  # the engines-only comm, rebuilt
    assert rc.load_balanced_view().map(lambda v: v + 1, range(40), block=True) == list(range(1, 41))
    big = np.arange(3 << 20, dtype=np.int64)  # 24 MB through the collective path
    dv.push(dict(survivor_big=big), block=True)
    assert all(int(s) == int(big.sum()) for s in dv.apply_sync(lambda: int(survivor_big.sum())))  # noqa: F821


@pytest.fixture
def job5(start_job):
    """A fresh 4-engine job with recovery, and a client of it."""
    j = start_job(5)
    rc = pcluster.Client(str(j.path), timeout=30)
    yield j, rc
    rc.close()


@pytest.mark.parametrize(
    "how, expect",
    [
        ("exit", "exited with code 3"),
        ("sigkill", "killed by SIGKILL"),
        ("sigsegv", "killed by SIGSEGV"),
    ],
)
def test_engine_death_costs_only_that_engine(job5, how, expect):
    j, rc = job5
    deaths = []
    rc.on_engine_died(lambda i, why: deaths.append((i, why)))
    victim_pid = rc[2].apply_sync(pid)
    rc[:].push(dict(kept=11), block=True)
    done = rc[0].apply_async(nap, 0.05, "done-before")
    assert done.get(10) == "done-before"
    other = rc[1].apply_async(nap, 1.0, "other")  # a request on a healthy engine, in flight
    t0 = time.monotonic()
    if how == "exit":
        dying = rc[2].execute("import os; os._exit(3)", block=False)
    elif how == "sigsegv":
        dying = rc[2].execute("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", block=False)
    else:
        dying = rc[2].apply_async(nap, 30)
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
    queued = rc[2].apply_async(nap, 0, "never")  # queued behind it on the same engine
    with pytest.raises(pcluster.EngineDied) as ei:
        dying.get(10)
    with pytest.raises(pcluster.EngineDied):
        queued.get(10)
    noticed = time.monotonic() - t0
    e = ei.value
    assert isinstance(e, pcluster.EngineError) and isinstance(e, pcluster.RemoteError)
    assert e.engine_id == 2
    assert f"pid {victim_pid}" in e.evalue and expect in e.evalue, e.evalue
    assert noticed < 2.0, f"the death was noticed after {noticed:.2f} s"
    assert other.get(10) == "other"  # requests to other engines are unaffected
    assert done.get(0) == "done-before"  # finished results are kept
    wait_for(lambda: deaths, "the on_engine_died callback")
    assert deaths[0][0] == 2 and expect in deaths[0][1]
    assert rc.dead_engines == {2: deaths[0][1]}
    assert rc.engines[2].alive is False and rc.engines[2].host
    with pytest.raises(IndexError, match="engine 2 died"):
        rc[2]
    assert rc[[0, 1, 3]].pull("kept", block=True) == [11, 11, 11]  # the survivors keep their namespaces
    assert_survivors_serve(rc, [0, 1, 3])
    qs = rc.queue_status()
    assert qs[0]["alive"] and 2 not in qs


def test_send_signal_as_ipyparallel(job5):
    """rc.send_signal(sig, targets): SIGINT interrupts the running code; a signal the engine's
    code handles reaches its handler; SIGTERM ends that engine, as a death the job survives."""
    j, rc = job5
    running = rc[1].execute("import time; time.sleep(100)", block=False)
    time.sleep(0.4)
    assert rc.send_signal(signal.SIGINT, targets=1) == [1]
    with pytest.raises(pcluster.RemoteError) as ei:
        running.get(10)
    assert ei.value.ename == "KeyboardInterrupt"
    rc[:].execute("import signal\ngot = []\nsignal.signal(signal.SIGUSR1, lambda s, f: got.append(s))", block=True)
    assert rc.send_signal(signal.SIGUSR1, targets=[0, 3]) == [0, 3]
    wait_for(lambda: rc[[0, 3]].pull("got", block=True) == [[signal.SIGUSR1]] * 2, "the engines' SIGUSR1 handlers")
    assert rc[1].pull("got", block=True) == []
    waiting = rc[2].apply_async(nap, 30)
    time.sleep(0.3)
    assert rc.send_signal(signal.SIGTERM, targets=[2]) == [2]
    with pytest.raises(pcluster.EngineDied, match="SIGTERM"):
        waiting.get(10)
    assert rc.ids == [0, 1, 3]
    assert_survivors_serve(rc, [0, 1, 3])
    with pytest.raises(IndexError, match="engine 2 died"):
        rc.send_signal(signal.SIGTERM, targets=[2])
    with pytest.raises(ValueError, match="one signal number"):
        rc.send_signal(0)


def test_a_second_client_is_told_too(job5):
    j, rc = job5
    with pcluster.Client(str(j.path)) as other:
        seen = []
        other.on_engine_died(lambda i, why: seen.append(i))
        rc[3].execute("import os; os._exit(4)", block=False)
        wait_for(lambda: seen == [3], "the other client's callback")
        assert other.ids == [0, 1, 2]
        assert other[:].apply_sync(engine_id) == [0, 1, 2]
    # a client that connects after the death sees the live engines only
    with pcluster.Client(str(j.path)) as late:
        assert late.ids == [0, 1, 2]
        assert "exited with code 4" in late.dead_engines[3]


def test_two_engines_die_one_after_the_other(job5):
    j, rc = job5
    rc[1].execute("import os; os._exit(1)", block=False)
    wait_for(lambda: rc.ids == [0, 2, 3], "the first death")
    assert rc[:].apply_sync(comm_sum) == [3, 3, 3]
    os.kill(rc[3].apply_sync(pid), signal.SIGKILL)
    wait_for(lambda: rc.ids == [0, 2], "the second death")
    assert_survivors_serve(rc, [0, 2])


def test_two_engines_killed_at_the_same_moment(start_job):
    """What a failing node does to its engines: both deaths are told, and the survivors rebuild
    their communicators once, over the right set."""
    j = start_job(6)
    with pcluster.Client(str(j.path), timeout=30) as rc:
        pids = rc[:].apply_sync(pid)
        waiting = {e: rc[e].apply_async(nap, 30) for e in (1, 3)}
        time.sleep(0.3)
        os.kill(pids[1], signal.SIGKILL)
        os.kill(pids[3], signal.SIGKILL)
        for e, ar in waiting.items():
            with pytest.raises(pcluster.EngineDied, match=f"engine {e} .*killed by SIGKILL"):
                ar.get(10)
        wait_for(lambda: rc.ids == [0, 2, 4], "both deaths")
        assert_survivors_serve(rc, [0, 2, 4])


def test_a_survivor_that_cannot_answer_holds_no_request_back(start_job):
    """An engine that stops answering (here SIGSTOP; on another host, one dead but not noticed
    yet) cannot help build the survivors' communicator: until it is counted out, requests for
    the others still run (point to point), and once it dies the rebuild goes on without it. The
    controller used to hang on exactly this: a second death while the first rebuild waited."""
    # PCLUSTER_DEAD_AFTER_S bounds how long pcluster.engine.comm waits for the survivors' build
    # (it + 10 s); on one host it decides nothing else (deaths are seen through pidfds).
    j = start_job(6, env={"PCLUSTER_DEAD_AFTER_S": "0.5"})
    with pcluster.Client(str(j.path), timeout=30) as rc:
        pids = rc[:].apply_sync(pid)
        rc[:].push(dict(kept=5), block=True)
        os.kill(pids[3], signal.SIGSTOP)
        try:
            with pytest.raises(pcluster.EngineDied, match="exited with code 1"):
                rc[1].execute("import os; os._exit(1)", block=True)
            wait_for(lambda: rc.ids == [0, 2, 3, 4], "the first death")
            others = rc[[0, 2, 4]]
            assert others.apply_sync(engine_id) == [0, 2, 4]
            others.push(dict(y=3), block=True)
            assert others.pull("y", block=True) == [3, 3, 3]
            assert others.pull("kept", block=True) == [5, 5, 5]
            # The survivors' communicator cannot be built while engine 3 neither answers nor is
            # counted out: code asking for it gets a bounded wait and the reason, not a hang.
            t_comm = time.monotonic()
            with pytest.raises(pcluster.RemoteError, match="survivors' communicator was not built within 10 s") as ei:
                rc[0].apply_sync(comm_sum)
            assert ei.value.ename == "RuntimeError" and 10 <= time.monotonic() - t_comm < 20
            stuck = rc[3].apply_async(engine_id)  # queued on the stopped engine
            t0 = time.monotonic()
            os.kill(pids[3], signal.SIGKILL)
        finally:
            os.kill(pids[3], signal.SIGCONT)
        with pytest.raises(pcluster.EngineDied, match="engine 3 .*killed by SIGKILL"):
            stuck.get(10)
        assert time.monotonic() - t0 < 2
        wait_for(lambda: rc.ids == [0, 2, 4], "the second death")
        assert_survivors_serve(rc, [0, 2, 4])


def test_engine_dies_in_the_middle_of_a_push_to_all(job5):
    j, rc = job5
    big = np.ones(25 << 20, dtype=np.uint8)  # 25 MiB to every engine
    victim = rc[1].apply_sync(pid)
    killer = threading.Timer(0.01, os.kill, (victim, signal.SIGKILL))
    killer.start()
    try:
        rc[:].push(dict(mid_push=big), block=True)
    except pcluster.CompositeError as e:
        # The dead engine's part fails; others either took it or, if the broadcast went
        # through the dead one, never got it (RequestLost): nothing is silently wrong.
        kinds = {type(x) for x in e.elist}
        assert kinds <= {pcluster.EngineDied, pcluster.RequestLost}, e.elist
        assert any(x.engine_id == 1 for x in e.elist)
    killer.join()
    wait_for(lambda: 1 not in rc.ids, "the death")
    assert_survivors_serve(rc, [0, 2, 3])


def test_engine_dies_in_the_middle_of_a_scatter(job5):
    j, rc = job5
    data = np.arange(40 << 20, dtype=np.uint8)
    victim = rc[2].apply_sync(pid)
    killer = threading.Timer(0.01, os.kill, (victim, signal.SIGKILL))
    killer.start()
    try:
        rc[:].scatter("mid_scatter", data, block=True)
    except pcluster.CompositeError as e:
        assert {type(x) for x in e.elist} <= {pcluster.EngineDied, pcluster.RequestLost}, e.elist
    killer.join()
    wait_for(lambda: 2 not in rc.ids, "the death")
    assert_survivors_serve(rc, [0, 1, 3])


def square_slowly(x):
    time.sleep(0.02)
    return x * x


@pytest.mark.parametrize("retries", [0, 2])
def test_engine_dies_in_the_middle_of_a_load_balanced_map(job5, retries):
    j, rc = job5
    lv = rc.load_balanced_view()
    victim = rc[0].apply_sync(pid)
    amr = lv.map(square_slowly, range(200), chunksize=5, retries=retries)
    wait_for(lambda: amr.progress >= 4, "the map to get going")
    os.kill(victim, signal.SIGKILL)
    if retries:
        # every chunk on the dead engine is retried elsewhere: the map completes, correct
        assert amr.get(60) == [x * x for x in range(200)]
    else:
        with pytest.raises((pcluster.EngineDied, pcluster.CompositeError)) as ei:
            amr.get(60)
        errors = ei.value.elist if isinstance(ei.value, pcluster.CompositeError) else [ei.value]
        assert all(isinstance(x, pcluster.EngineDied) for x in errors)
        assert all("engine 0" in x.evalue for x in errors)
    wait_for(lambda: 0 not in rc.ids, "the death")
    assert_survivors_serve(rc, [1, 2, 3])


def test_request_to_a_dead_engine_is_refused_at_once(job5):
    j, rc = job5
    dv = rc[[1, 2]]  # an explicit list, made before the death
    os.kill(rc[2].apply_sync(pid), signal.SIGKILL)
    wait_for(lambda: 2 not in rc.ids, "the death")
    t0 = time.monotonic()
    with pytest.raises(IndexError, match=r"engine 2 died \(killed by SIGKILL\); the live engines are \[0, 1, 3\]"):
        dv.apply_sync(engine_id)
    assert time.monotonic() - t0 < 1
    assert rc[[1, 3]].apply_sync(engine_id) == [1, 3]


def test_controller_death_ends_every_process(start_job):
    """Recovery must not leave orphans: when rank 0 dies, the engines notice and exit, mpirun
    ends, and the client is told."""
    j = start_job(4)
    with pcluster.Client(str(j.path)) as rc:
        pids = rc[:].apply_sync(pid)
        running = rc[:].apply_async(nap, 60)
        time.sleep(0.3)
        os.kill(rc.connection_info.controller_pid, signal.SIGKILL)
        with pytest.raises(pcluster.JobEndedError):
            running.get(15)
    assert j.wait_exit(15) is not None, j.describe()

    def alive(p):
        try:
            os.kill(p, 0)
            return True
        except ProcessLookupError:
            return False

    wait_for(lambda: not any(alive(p) for p in pids), "every engine to exit", timeout=15)
    assert "the controller (rank 0" in j.log_text()


# --------------------------------------------------------------------------- interrupts
INTERRUPTIBLE = {
    "a pure-Python loop": "while True: pass",
    "time.sleep": "import time; time.sleep(100)",
    "a socket read": "import socket; a, b = socket.socketpair(); a.recv(10)",
    "an Event wait": "import threading; threading.Event().wait()",
    "a subprocess": "import subprocess; subprocess.run(['sleep', '100'])",
}


@pytest.mark.parametrize("what", list(INTERRUPTIBLE))
def test_interrupt_running_code(rc, what):
    rc[1].execute("import numpy; kept_here = 5", block=True)
    ar = rc[1].execute(INTERRUPTIBLE[what], block=False)
    time.sleep(0.4)  # running by now on an idle engine
    assert not ar.done()
    t0 = time.monotonic()
    assert ar.interrupt() == [1]
    with pytest.raises(pcluster.RemoteError) as ei:
        ar.get(10)
    assert ei.value.ename == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 1.0
    assert rc[1].pull("kept_here", block=True) == 5  # the namespace is kept
    assert rc[1].apply_sync(engine_id) == 1  # and the engine serves on


def test_interrupt_all_engines_and_queued_work_runs(rc):
    ar = rc[:].execute("import time; time.sleep(100)", block=False)
    queued = rc[:].execute("after_interrupt = True", block=False)
    time.sleep(0.4)
    assert rc.interrupt() == rc.ids
    with pytest.raises(pcluster.CompositeError) as ei:
        ar.get(10)
    assert [x.ename for x in ei.value.elist] == ["KeyboardInterrupt"] * len(rc.ids)
    queued.get(10)  # requests queued behind it still run
    assert rc[:].pull("after_interrupt", block=True) == [True] * len(rc.ids)


def test_interrupt_leaves_a_request_that_is_not_running_alone(rc):
    first = rc[2].execute("import time; time.sleep(1.0); first_done = 1", block=False)
    second = rc[2].execute("second_done = 2", block=False)
    time.sleep(0.3)
    second.interrupt()  # queued behind `first`: neither is disturbed
    first.get(10)
    second.get(10)
    assert rc[2].pull(["first_done", "second_done"], block=True) == [1, 2]


def test_interrupt_a_load_balanced_task(rc):
    lv = rc.load_balanced_view()
    t = lv.apply(nap, 100)
    time.sleep(0.4)
    assert len(t.interrupt()) == 1
    with pytest.raises(pcluster.RemoteError) as ei:
        t.get(10)
    assert ei.value.ename == "KeyboardInterrupt"
    assert lv.apply(nap, 0, "next").get(10) == "next"


def test_sigint_to_an_engine_interrupts_only_the_running_request(rc):
    p = rc[3].apply_sync(pid)
    ar = rc[3].execute("import time; time.sleep(100)", block=False)
    time.sleep(0.4)
    os.kill(p, signal.SIGINT)
    with pytest.raises(pcluster.RemoteError) as ei:
        ar.get(10)
    assert ei.value.ename == "KeyboardInterrupt"
    os.kill(p, signal.SIGINT)  # nothing runs: ignored, the next request is not hit
    time.sleep(0.2)
    assert rc[3].apply_sync(engine_id) == 3


def test_ctrl_c_can_interrupt_the_engines_too(rc):
    rc.ctrl_c_interrupts = True
    try:
        ar = rc[0].execute("import time; time.sleep(100)", block=False)
        time.sleep(0.3)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt, match="interrupted too"):
            ar.get(10)
        with pytest.raises(pcluster.RemoteError) as ei:
            ar.get(10)
        assert ei.value.ename == "KeyboardInterrupt"
    finally:
        rc.ctrl_c_interrupts = False


@pytest.mark.parametrize(
    "code, ename",
    [
        ("x = bytearray(1 << 62)", "MemoryError"),
        ("import threading, sys\nt = threading.Thread(target=sys.exit)\nt.start(); t.join()\nthread_exit_ok = 1", None),
        ("raise SystemExit(5)", "SystemExit"),
    ],
)
def test_python_failures_never_kill_an_engine(rc, code, ename):
    ar = rc[0].execute(code, block=False)
    if ename:
        with pytest.raises(pcluster.RemoteError) as ei:
            ar.get(30)
        assert ei.value.ename == ename
    else:
        ar.get(30)
    assert rc[0].apply_sync(engine_id) == 0


# --------------------------------------------------------------------------- ending without waiting forever
def test_texts_of_any_size_reach_the_client(rc):
    """What a request prints is never cut (it leaves in output messages); an exception's message
    and an execute result are cut at PCLUSTER_MAX_REPLY_TEXT with a note - no reply's header can
    outgrow the frame limit and take the connection or the job down."""
    ar = rc[0].execute("print('x' * 20_000_000)", block=False)
    ar.get(60)
    assert len(ar.stdout) == 20_000_001 and ar.stdout.count("x") == 20_000_000
    with pytest.raises(pcluster.RemoteError) as ei:
        rc[0].execute("raise ValueError('y' * 20_000_000)", block=True)
    assert ei.value.evalue.startswith("y" * 1000)
    assert "characters cut (PCLUSTER_MAX_REPLY_TEXT=" in ei.value.evalue
    ar = rc[0].execute("'z' * 20_000_000", silent=False, block=True)
    assert "characters cut" in ar.execute_result
    assert rc[:].apply_sync(engine_id) == rc.ids


def test_shutdown_ends_within_a_bound_while_code_runs(start_job):
    j = start_job(3, env={"PCLUSTER_SHUTDOWN_GRACE_S": "2"})
    with pcluster.Client(str(j.path)) as rc:
        rc[0].execute("while True: pass", block=False)
        rc[1].execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntry:\n"
                      "    time.sleep(1000)\nexcept BaseException:\n    time.sleep(1000)", block=False)
        time.sleep(0.3)
        t0 = time.monotonic()
        rc.shutdown(timeout=EXIT_TIMEOUT)
    # the loop is interrupted after the grace; the code that swallows the interrupt is ended
    assert j.wait_exit(EXIT_TIMEOUT) is not None, j.describe()
    assert time.monotonic() - t0 < 2 + 5 + 5, j.describe()
    assert not j.path.exists()


def test_bridge_death_ends_the_job_and_its_connection_file(start_job):
    j = start_job(3)
    info = j.wait_ready()
    with pcluster.Client(str(j.path)) as rc:
        rc[0].execute("import time; time.sleep(1000)", block=False)  # a long cell does not hold the job
        os.kill(info["bridge_pid"], signal.SIGKILL)
        with pytest.raises(pcluster.JobEndedError):
            rc[1].apply_sync(engine_id)
    assert j.wait_exit(EXIT_TIMEOUT) is not None, j.describe()
    assert not j.path.exists(), "the dead bridge's connection file was left behind"


def test_shutdown_of_single_engines(job5, start_job):
    """ipyparallel's rc.shutdown(targets=...): with recovery those engines end and the job goes
    on without them; without recovery the error says why it cannot."""
    j, rc = job5
    running = rc[3].apply_async(nap, 30)
    time.sleep(0.3)
    assert rc.shutdown(targets=[1, 3]) == [1, 3]
    assert rc.ids == [0, 2]
    assert "shut down by a client" in rc.dead_engines[1]
    with pytest.raises(pcluster.EngineDied, match="shut down by a client"):
        running.get(10)
    assert_survivors_serve(rc, [0, 2])
    with pytest.raises(IndexError, match="engine 1 died"):
        rc.shutdown(targets=1)
    plain = start_job(3, recovery=False)
    with pcluster.Client(str(plain.path), timeout=30) as c:
        with pytest.raises(ValueError, match="started without recovery.*--enable-recovery"):
            c.shutdown(targets=[0])
        assert c.ids == [0, 1] and c[:].apply_sync(lambda: 1) == [1, 1]
        c.shutdown()
