"""The load-balanced task farm (LoadBalancedView), end to end against the shared 4-engine job.

The scheduler is mpi_controller/scheduler.hpp: least load (lowest engine number among equals),
prefetch 2 per engine, FIFO, after/follow dependencies, retries on other engines, dependency
timeouts, abort of tasks not yet sent. Tests that depend on where tasks land first wait until
the farm is idle. Only behaviour is asserted; times are sanity bounds.
"""

import asyncio
import concurrent.futures
import itertools
import sys
import time

import cloudpickle
import pytest

import pcluster
from pcluster import _progress
from pcluster.error import DependencyError, RemoteError, TaskAborted, TaskError, TaskTimeout
from pcluster.lbview import AsyncMapResult, LoadBalancedView

# Functions defined here must travel by value: the engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDS = [0, 1, 2, 3]
PREFETCH = 2  # the scheduler's default (PCLUSTER_TASK_PREFETCH unset)
T = 60  # bound on every single wait


# --------------------------------------------------------------------------- engine functions
def whoami():
    from pcluster.engine import engine_id

    return engine_id


def add(a, b=0, c=0):
    return a + b + c


def nap(t, value=None):
    import time

    time.sleep(t)
    return value


def nap_id(t):
    import time

    from pcluster.engine import engine_id

    time.sleep(t)
    return engine_id


def stamp(t):
    """(engine, start, end) of a nap of t seconds."""
    import time

    from pcluster.engine import engine_id

    start = time.time()
    time.sleep(t)
    return engine_id, start, time.time()


def flaky(path, bad):
    """Records where it ran (one line per try), raises on the engines in `bad`."""
    from pcluster.engine import engine_id

    with open(path, "a") as f:
        f.write(f"{engine_id}\n")
    if engine_id in bad:
        raise RuntimeError(f"no luck on engine {engine_id}")
    return engine_id


def logged_nap(path, t, value=None):
    import time

    with open(path, "a") as f:
        f.write(f"{value}\n")
    time.sleep(t)
    return value


def boom(x):
    raise ValueError(f"boom {x}")


def square_or_fail(x):
    if x % 5 == 3:
        raise ValueError(f"item {x}")
    return x * x


def slept(t):
    import time

    time.sleep(t)
    return t


# --------------------------------------------------------------------------- helpers
def tries(path):
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def wait_idle(rc, timeout=T):
    """Until no load-balanced task is queued or running anywhere."""
    deadline = time.monotonic() + timeout
    while True:
        qs = rc.queue_status()
        if qs["unassigned"] == 0 and all(qs[e]["queue"] == 0 for e in rc.ids):
            return qs
        if time.monotonic() > deadline:
            pytest.fail(f"the farm did not become idle within {timeout} s: {qs}")
        time.sleep(0.05)


def wait_until(pred, timeout=T, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def raises_remote(ar, cls=RemoteError, timeout=T):
    with pytest.raises(cls) as ei:
        ar.get(timeout)
    return ei.value


@pytest.fixture
def lv(rc):
    wait_idle(rc)
    view = rc.load_balanced_view()
    yield view
    # Leave the shared job idle for the next test.
    wait_idle(rc)


# --------------------------------------------------------------------------- apply
def test_view_defaults_and_apply_forms(rc, lv):
    assert isinstance(lv, LoadBalancedView)
    assert lv.block is False
    assert len(lv) == 4
    ar = lv.apply(add, 1, 2, c=3)
    assert isinstance(ar, pcluster.AsyncResult)
    assert ar.get(T) == 6
    assert ar.engine_id in IDS
    ar2 = lv.apply_async(add, 1, b=5)
    assert isinstance(ar2, pcluster.AsyncResult)
    assert ar2.get(T) == 6
    assert lv.apply_sync(add, 2, b=3) == 5
    assert lv.apply(add, 1, block=True) == 1
    lv.block = True
    assert lv.apply(add, 4, 4) == 8
    assert isinstance(lv.apply_async(add, 4), pcluster.AsyncResult)
    lv.block = False
    # ar.engine_id is where it ran.
    ar = lv.apply(whoami)
    assert ar.get(T) == ar.engine_id


def test_engine_id_known_only_after_completion(lv):
    ar = lv.apply(nap_id, 0.5)
    if not ar.done():
        assert ar.engine_id is None
    eid = ar.get(T)
    assert ar.engine_id == eid


def test_targets_restrict_engines(rc, lv):
    sub = rc.load_balanced_view(targets=[1, 3])
    assert len(sub) == 2
    ars = [sub.apply(nap_id, 0.2) for _ in range(10)]
    got = [ar.get(T) for ar in ars]
    assert set(got) == {1, 3}  # only those, and both (least load)
    assert [ar.engine_id for ar in ars] == got
    one = rc.load_balanced_view(targets=2)
    assert {one.apply(whoami).get(T) for _ in range(4)} == {2}
    # set_flags(targets=...) / temp_flags
    with lv.temp_flags(targets=[0]):
        assert {lv.apply(whoami).get(T) for _ in range(3)} == {0}
    assert lv.targets is None
    with pytest.raises(IndexError):
        rc.load_balanced_view(targets=[7])
    with pytest.raises(KeyError):
        lv.set_flags(bogus=1)


def test_tasks_spread_over_all_engines(lv):
    ars = [lv.apply(nap_id, 0.5) for _ in range(8)]
    got = [ar.get(T) for ar in ars]
    assert set(got) == set(IDS)
    assert [ar.engine_id for ar in ars] == got


# --------------------------------------------------------------------------- retries
def test_retries_go_to_other_engines(lv, tmp_path):
    path = tmp_path / "tries"
    ar = lv.apply(flaky, str(path), {0, 1}, retries=2)
    eid = ar.get(T)
    t = tries(path)
    assert eid not in (0, 1)
    assert ar.engine_id == eid
    assert t[-1] == eid
    assert len(t) == len(set(t)), f"a retry went back to an engine that failed it: {t}"
    assert set(t[:-1]) <= {0, 1}, t  # every try before the last failed
    # Engines 0 and 1 only: it fails on the first, goes to the other and fails there too.
    sub = lv.client.load_balanced_view(targets=[0, 1, 2])
    path2 = tmp_path / "tries2"
    sub.apply(flaky, str(path2), {0, 1, 2}, retries=2).wait(T)
    assert sorted(tries(path2)) == [0, 1, 2]


def test_retries_flag_on_view(rc, lv, tmp_path):
    path = tmp_path / "tries"
    lv.set_flags(retries=3)
    assert lv.apply(flaky, str(path), {0, 1}).get(T) in (2, 3)
    t = tries(path)
    assert set(t[:-1]) <= {0, 1} and t[-1] in (2, 3) and len(t) == len(set(t)), t
    # With the flag unset, the first failure is final.
    lv.set_flags(retries=0)
    with pytest.raises(pcluster.RemoteError):
        lv.apply(flaky, str(tmp_path / "none"), set(rc.ids)).get(T)


def test_no_retries_fails_with_engine_error(rc, tmp_path):
    path = tmp_path / "tries"
    sub = rc.load_balanced_view(targets=[0, 1])
    e = raises_remote(sub.apply(flaky, str(path), {0, 1}, retries=0))
    assert not isinstance(e, TaskError)
    assert e.ename == "RuntimeError"
    assert e.engine_id in (0, 1)
    assert f"no luck on engine {e.engine_id}" in e.evalue
    assert tries(path) == [e.engine_id]


def test_always_failing_task_tries_retries_plus_one_engines(lv, tmp_path):
    path = tmp_path / "tries"
    e = raises_remote(lv.apply(flaky, str(path), set(IDS), retries=2))
    t = tries(path)
    assert len(t) == 3 and len(set(t)) == 3, t
    assert e.ename == "RuntimeError"
    assert e.engine_id == t[-1]  # the last error is the one reported
    assert f"no luck on engine {t[-1]}" in e.evalue


def test_more_retries_than_engines_fails_after_each_engine_once(rc, tmp_path):
    path = tmp_path / "tries"
    sub = rc.load_balanced_view(targets=[0, 1])
    e = raises_remote(sub.apply(flaky, str(path), {0, 1}, retries=5))
    assert sorted(tries(path)) == [0, 1]
    assert e.ename == "RuntimeError"
    assert e.engine_id == tries(path)[-1]
    wait_idle(rc)


# --------------------------------------------------------------------------- dependencies
def test_after_waits_for_slow_task(lv):
    a = lv.apply(stamp, 1.0)
    b = lv.apply(stamp, 0, after=a)
    c = lv.apply(stamp, 0)  # no dependency: does not wait
    _, _, a_end = a.get(T)
    _, b_start, _ = b.get(T)
    _, c_start, _ = c.get(T)
    assert b_start >= a_end
    assert c_start < a_end


def test_after_task_id_and_list(lv):
    a1 = lv.apply(stamp, 0.6)
    a2 = lv.apply(stamp, 1.0)
    b = lv.apply(stamp, 0, after=[a1.msg_id, a2])
    ends = [a1.get(T)[2], a2.get(T)[2]]
    assert b.get(T)[1] >= max(ends)


def test_after_map_result(lv):
    m = lv.map_async(stamp, [0.3, 0.8, 0.3, 0.8, 0.5], chunksize=1)
    assert len(m.msg_ids) == 5
    b = lv.apply(stamp, 0, after=m)
    res = m.get(T)
    assert b.get(T)[1] >= max(r[2] for r in res)


def test_after_failed_task_is_dependency_error(lv):
    a = lv.apply(boom, 1)
    b = lv.apply(add, 1, after=a)  # a still pending (or just failed)
    ea = raises_remote(a)
    assert ea.ename == "ValueError"
    eb = raises_remote(b, DependencyError)
    assert isinstance(eb, TaskError) and isinstance(eb, RemoteError)
    assert eb.ename == "DependencyFailed"
    assert str(a.msg_id) in eb.evalue
    # a dependency that failed before submission
    c = lv.apply(add, 1, after=a)
    ec = raises_remote(c, DependencyError, timeout=10)
    assert ec.ename == "DependencyFailed"
    # a chain: dependents of dependents fail too
    d = lv.apply(nap, 0.5)
    d_bad = lv.apply(boom, 2, after=d)
    d_dep = lv.apply(add, 1, after=d_bad)
    d_dep2 = lv.apply(add, 1, after=d_dep)
    assert d.get(T) is None
    assert raises_remote(d_bad).ename == "ValueError"
    assert raises_remote(d_dep, DependencyError).ename == "DependencyFailed"
    assert raises_remote(d_dep2, DependencyError).ename == "DependencyFailed"


def test_follow_runs_on_same_engine(lv):
    a = lv.apply(nap_id, 0.5)
    followers = [lv.apply(nap_id, 0.1, follow=a) for _ in range(6)]
    others = [lv.apply(nap_id, 0.3) for _ in range(6)]
    eid = a.get(T)
    assert [f.get(T) for f in followers] == [eid] * 6
    assert [f.engine_id for f in followers] == [eid] * 6
    assert len({o.get(T) for o in others}) > 1
    # follow a finished task
    assert lv.apply(whoami, follow=a).get(T) == eid


def test_follow_tasks_on_different_engines_is_impossible(rc, lv):
    on0 = rc.load_balanced_view(targets=[0])
    on1 = rc.load_balanced_view(targets=[1])
    # pending, pinned to different engines: refused at submission
    a, b = on0.apply(nap_id, 0.5), on1.apply(nap_id, 0.5)
    c = lv.apply(whoami, follow=[a, b])
    e = raises_remote(c, DependencyError, timeout=10)
    assert e.ename == "ImpossibleDependency"
    assert (a.get(T), b.get(T)) == (0, 1)
    # finished on different engines
    d = lv.apply(whoami, follow=[a, b])
    assert raises_remote(d, DependencyError, timeout=10).ename == "ImpossibleDependency"
    # followed task on engine 0, but the view may only use engine 2
    on2 = rc.load_balanced_view(targets=[2])
    f = on2.apply(whoami, follow=a)
    assert raises_remote(f, DependencyError, timeout=10).ename == "ImpossibleDependency"


def test_follow_unpinned_tasks_that_ran_on_different_engines(lv):
    # Not pinned at submission: they land on different engines (idle farm), the follower waits
    # and then can run nowhere.
    a, b = lv.apply(nap_id, 0.8), lv.apply(nap_id, 0.8)
    c = lv.apply(whoami, follow=[a, b])
    ea, eb = a.get(T), b.get(T)
    assert ea != eb
    e = raises_remote(c, DependencyError)
    assert e.ename == "ImpossibleDependency"


def test_unknown_dependency_is_refused_at_submission(lv):
    # Ids no task can have (client number 0; this client's own ids not issued yet) are refused
    # by the client before anything is sent.
    with pytest.raises(ValueError, match="unknown task id 123456789"):
        lv.apply(add, 1, after=[123456789])
    mine = (lv.client._conn.client_no << 32) | 0xFFFFFF
    with pytest.raises(ValueError, match="unknown task id"):
        lv.apply(add, 1, follow=mine)
    # An id that could be another client's: the controller refuses it at once.
    t0 = time.monotonic()
    other = (9999 << 32) | 5
    a = lv.apply(add, 1, after=[other])
    e = raises_remote(a, DependencyError, timeout=10)
    assert e.ename == "InvalidDependency"
    assert str(other) in e.evalue
    b = lv.apply(add, 1, follow=other)
    assert raises_remote(b, DependencyError, timeout=10).ename == "InvalidDependency"
    assert time.monotonic() - t0 < 10
    with pytest.raises(ValueError, match="not a task id"):  # strings are ids (ipyparallel's), this one is not
        lv.apply(add, 1, after="not a task")
    with pytest.raises(TypeError):
        lv.apply(add, 1, after=1.5)


# --------------------------------------------------------------------------- timeouts
def test_timeout_waiting_for_slow_dependency(lv):
    slow = lv.apply(nap, 3.0, "slow")
    t0 = time.monotonic()
    timed = lv.apply(add, 1, after=slow, timeout=0.5)
    patient = lv.apply(add, 2, after=slow)
    e = raises_remote(timed, TaskTimeout, timeout=T)
    assert time.monotonic() - t0 < 2.9  # failed while the dependency still ran
    assert not slow.done()
    assert e.ename == "TaskTimeout"
    assert str(slow.msg_id) in e.evalue  # names the pending dependency
    assert patient.get(T) == 2
    assert slow.get(T) == "slow"


def test_timeout_does_not_limit_running_time(lv):
    # The timeout is about waiting for dependencies, not how long the task runs.
    assert lv.apply(nap, 1.0, 5, timeout=0.3).get(T) == 5
    a = lv.apply(nap, 0.1)
    assert a.get(T) is None
    assert lv.apply(add, 1, after=a, timeout=0.3).get(T) == 1  # already met


# --------------------------------------------------------------------------- abort
def test_abort_queued_and_running(rc, lv):
    n = len(IDS) * PREFETCH + 4
    ars = [lv.apply(nap, 1.5, i) for i in range(n)]
    dep = lv.apply(add, 1, after=ars[-4])
    wait_until(lambda: rc.queue_status()["unassigned"] >= 5, what="a saturated farm")
    qs = rc.queue_status()
    assert qs["unassigned"] == 5 and qs["waiting"] == 1, qs
    assert ars[-1].abort() == 1
    e = raises_remote(ars[-1], TaskAborted, timeout=10)
    assert e.ename == "TaskAborted"
    assert rc.abort([ars[-2], ars[-3].msg_id]) == 2
    for ar in ars[-3:-1]:
        raises_remote(ar, TaskAborted, timeout=10)
    assert rc.abort(ars[-4]) == 1
    raises_remote(ars[-4], TaskAborted, timeout=10)
    # the dependent of an aborted task fails
    assert raises_remote(dep, DependencyError, timeout=10).ename == "DependencyFailed"
    # running and prefetched tasks cannot be aborted: they complete
    assert ars[0].abort() == 0
    assert ars[len(IDS)].abort() == 0  # prefetched on engine 0
    assert [ar.get(T) for ar in ars[:-4]] == list(range(n - 4))
    # finished
    assert ars[0].abort() == 0
    assert rc.abort([ars[0]]) == 0
    assert rc.abort([]) == 0


def test_abort_all_outstanding(rc, lv):
    n = len(IDS) * PREFETCH + 3
    ars = [lv.apply(nap, 1.0, i) for i in range(n)]
    wait_until(lambda: rc.queue_status()["unassigned"] >= 3, what="a saturated farm")
    assert rc.abort() == 3
    for ar in ars[-3:]:
        raises_remote(ar, TaskAborted, timeout=10)
    assert [ar.get(T) for ar in ars[:-3]] == list(range(n - 3))
    assert rc.abort() == 0


def test_abort_map_result(rc, lv):
    n = len(IDS) * PREFETCH + 4
    m = lv.map_async(nap, [1.5] * n, range(n), chunksize=1)
    assert len(m) == n
    wait_until(lambda: rc.queue_status()["unassigned"] >= 4, what="a saturated farm")
    assert m.abort() == 4
    with pytest.raises(RemoteError) as ei:
        m.get(T)
    err = ei.value
    elist = getattr(err, "elist", [err])
    assert len(elist) == 4
    assert all(isinstance(x, TaskAborted) for x in elist)
    # the chunks that were sent completed
    done = [c for c in m._children if c.exception(T) is None]
    assert [c.get(0) for c in done] == [[i] for i in range(n - 4)]
    assert m.abort() == 0  # all finished


def test_abort_other_clients_task_is_refused(job, rc, lv):
    ar = lv.apply(nap, 1.5, "mine")
    queued = [lv.apply(nap, 1.5, i) for i in range(len(IDS) * PREFETCH)]
    wait_until(lambda: rc.queue_status()["unassigned"] >= 1, what="a queued task")
    with pcluster.Client(str(job.path), timeout=10) as other:
        assert other.abort([queued[-1].msg_id]) == 0
    assert ar.get(T) == "mine"
    assert queued[-1].get(T) == len(queued) - 1


# --------------------------------------------------------------------------- queue_status
def test_queue_status(rc, lv):
    before = rc.queue_status()
    assert set(before) == set(IDS) | {"unassigned", "waiting"}
    for e in IDS:
        assert {"queue", "queued", "running", "completed"} <= set(before[e])
        assert before[e]["queue"] == 0
    assert before["unassigned"] == 0 and before["waiting"] == 0
    n = len(IDS) * PREFETCH + 4
    ars = [lv.apply(nap, 1.0) for _ in range(n)]
    dep = lv.apply(add, 1, after=ars[-1])
    wait_until(lambda: rc.queue_status()["unassigned"] >= 5, what="a saturated farm")
    busy = rc.queue_status()
    assert busy["unassigned"] == 5 and busy["waiting"] == 1, busy
    for e in IDS:
        s = busy[e]
        assert s["queue"] == PREFETCH, busy
        assert s["running"] == 1 and s["queued"] == PREFETCH - 1, busy
        assert s["queue"] == s["queued"] + s["running"]
    only = rc.queue_status(targets=[1])
    assert set(only) == {1, "unassigned", "waiting"}
    for ar in ars:
        ar.get(T)
    assert dep.get(T) == 1
    after = wait_idle(rc)
    assert sum(after[e]["completed"] - before[e]["completed"] for e in IDS) == n + 1
    assert all(after[e]["completed"] > before[e]["completed"] for e in IDS)


# --------------------------------------------------------------------------- map
@pytest.mark.parametrize("chunksize", [1, 7, None])
def test_map_ordered_results(lv, chunksize):
    xs = list(range(50))
    assert lv.map_sync(square_or_fail, [x for x in xs if x % 5 != 3], chunksize=chunksize) == [
        square_or_fail(x) for x in xs if x % 5 != 3
    ]
    ys = range(100, 137)
    amr = lv.map(add, xs, ys, chunksize=chunksize)
    assert isinstance(amr, AsyncMapResult)
    assert amr.get(T) == list(map(add, xs, ys))  # shortest sequence wins
    expected_chunks = -(-37 // chunksize) if chunksize else len(amr)
    assert len(amr) == expected_chunks
    assert list(amr) == list(map(add, xs, ys))
    # three sequences, one a generator
    assert lv.map_sync(add, xs, xs, (x * 10 for x in xs), chunksize=chunksize) == [x + x + 10 * x for x in xs]


def test_map_empty_and_blocking(lv):
    assert lv.map_sync(add, []) == []
    amr = lv.map(add, [])
    assert amr.get(T) == [] and len(amr) == 0 and list(amr) == []
    lv.block = True
    assert lv.map(add, [1, 2], [3, 4]) == [4, 6]
    assert isinstance(lv.map_async(add, [1]), AsyncMapResult)
    with pytest.raises(TypeError):
        lv.map(add)


def test_map_unordered_yields_fast_chunks_first(lv):
    times = [1.5, 0.1, 0.2, 0.1]
    it = list(lv.map(slept, times, chunksize=1, ordered=False))
    assert sorted(it) == sorted(times)
    assert it[-1] == 1.5
    assert list(lv.map(slept, times, chunksize=1)) == times  # ordered


def test_map_return_exceptions(lv):
    xs = list(range(12))
    res = lv.map_sync(square_or_fail, xs, chunksize=2, return_exceptions=True)
    assert len(res) == 12
    for x, r in zip(xs, res):
        if x % 5 == 3:
            assert isinstance(r, RemoteError), r
            assert r.ename == "ValueError" and f"item {x}" in r.evalue
        else:
            assert r == x * x
    # without: the map raises (one failing chunk: its error; two: a CompositeError)
    with pytest.raises(RemoteError) as ei:
        lv.map_sync(square_or_fail, [1, 2, 3], chunksize=3)
    assert ei.value.ename == "ValueError"
    with pytest.raises(pcluster.CompositeError) as ei:
        lv.map_sync(square_or_fail, xs, chunksize=2)
    assert len(ei.value.elist) == 2 and {e.ename for e in ei.value.elist} == {"ValueError"}


@pytest.mark.parametrize("bars", [False, True])
def test_map_progress_and_wait_interactive(lv, monkeypatch, bars):
    if bars:
        monkeypatch.setattr(_progress, "enabled", lambda: True)
    else:
        monkeypatch.setenv("PCLUSTER_NONINTERACTIVE", "1")
    amr = lv.map_async(nap, [0.3] * 8, chunksize=1)
    assert 0 <= amr.progress <= 8
    amr.wait_interactive(interval=0.05, timeout=T)
    assert amr.done() and amr.progress == 8 == len(amr)
    assert amr.get(0) == [None] * 8
    slow = lv.map_async(nap, [2.0] * 4, chunksize=1)
    with pytest.raises(TimeoutError):
        slow.wait_interactive(interval=0.05, timeout=0.2)
    assert slow.wait_interactive(interval=0.05, timeout=0.2, return_value=True) is False
    assert slow.wait_interactive(interval=0.05, timeout=T, return_value=True) is True


def test_await_map_and_apply_in_asyncio(lv):
    async def main():
        m = lv.map_async(add, range(10), range(10), chunksize=3)
        a = lv.apply(add, 20, 22)
        return await m, await a

    assert asyncio.run(asyncio.wait_for(main(), T)) == ([2 * i for i in range(10)], 42)


# --------------------------------------------------------------------------- imap
def test_imap_is_lazy_and_ordered(lv):
    pulled = []

    def source():
        for i in range(200):
            pulled.append(i)
            yield i

    cs, mo = 2, 3
    it = lv.imap(add, source(), chunksize=cs, max_outstanding=mo)
    assert not pulled  # nothing read before the first result is asked for
    first = next(it)
    assert first == 0
    # A bounded window: max_outstanding chunks in flight, plus the one refilled after the first.
    assert len(pulled) <= mo * cs + cs, len(pulled)
    rest = list(it)
    assert [first] + rest == list(range(200))
    assert len(pulled) == 200


def test_imap_unordered(lv):
    times = [1.5, 0.1, 0.2, 0.1]
    out = list(lv.imap(slept, times, ordered=False))
    assert sorted(out) == sorted(times)
    assert out[-1] == 1.5
    assert list(lv.imap(add, range(30), range(30), chunksize=4)) == [2 * i for i in range(30)]


def test_imap_break_aborts_the_rest(start_job, tmp_path):
    # A job of its own with the window fixed at its default: on the shared job, fast tasks of
    # earlier tests have widened the adaptive window (up to 32), and all 12 would be on engines.
    j = start_job(nranks=len(IDS) + 1, env={"PCLUSTER_TASK_PREFETCH": str(PREFETCH)})
    rc = pcluster.Client(str(j.path), timeout=10)
    lv = rc.load_balanced_view()
    path = tmp_path / "ran"
    pulled = []

    def source():
        for i in range(60):
            pulled.append(i)
            yield i

    mo = 12
    # The first item is quick, the rest slow: when the first result is in, the other engines
    # still run their first task, so the window's tail is not yet sent.
    times = itertools.chain([0.05], itertools.repeat(1.5))
    for r in lv.imap(logged_nap, itertools.repeat(str(path)), times, source(), max_outstanding=mo):
        assert r == 0
        break  # the generator is closed here: what was not sent is aborted
    assert len(pulled) <= mo + 2
    qs = wait_idle(rc)
    assert qs["unassigned"] == 0
    ran = tries(path)
    # Only what was already on an engine (running or prefetched) ran after the break.
    assert len(ran) <= 1 + len(IDS) * PREFETCH + 1, ran
    assert len(ran) < len(pulled)
    # the farm still works
    assert lv.apply_sync(add, 1, 2) == 3
    assert lv.map_sync(add, range(5), chunksize=2) == list(range(5))
    rc.close()


def test_imap_return_exceptions(lv):
    out = list(lv.imap(square_or_fail, range(10), chunksize=3, return_exceptions=True))
    assert [type(r) is RemoteError for r in out] == [x % 5 == 3 for x in range(10)]
    with pytest.raises(RemoteError):
        list(lv.imap(square_or_fail, range(10), chunksize=3))


# --------------------------------------------------------------------------- bad input
def test_function_that_cannot_be_unpickled_fails_only_its_task(lv, tmp_path, monkeypatch):
    name = "lbview_client_only_mod"
    (tmp_path / f"{name}.py").write_text(
        "class Thing:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n"
        "\n"
        "def make(x):\n"
        "    return Thing(x).x * 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    mod = __import__(name)
    try:
        assert mod.make(3) == 6  # fine here
        ar = lv.apply(mod.make, 3)
        e = raises_remote(ar)
        assert not isinstance(e, TaskError)
        assert name in str(e) or name in e.traceback, e
        assert isinstance(e.engine_id, int)
        assert lv.apply_sync(add, 1, 2) == 3
        # with retries: every engine fails the same way, the error is the engine's
        e = raises_remote(lv.apply(mod.make, 3, retries=2))
        assert name in str(e) or name in e.traceback
        # a map chunk
        with pytest.raises(RemoteError):
            lv.map_sync(mod.make, [1, 2, 3])
        assert lv.map_sync(add, [1, 2, 3]) == [1, 2, 3]
    finally:
        sys.modules.pop(name, None)


def test_result_that_cannot_be_pickled_fails_only_its_task(lv):
    def gen():
        return (i for i in range(3))

    with pytest.raises(RemoteError):
        lv.apply(gen).get(T)
    assert lv.apply_sync(add, 1, 2) == 3


def test_bad_arguments_raise_at_submission(rc, lv):
    before = set(rc.outstanding)
    with pytest.raises(ValueError):
        lv.apply(add, 1, retries=-1)
    with pytest.raises(ValueError):
        lv.apply(add, 1, retries=1.5)
    with pytest.raises(ValueError):
        lv.map(add, [1, 2], chunksize=0)
    with pytest.raises(ValueError):
        lv.map(add, [1, 2], chunksize=-3)
    with pytest.raises(ValueError):
        lv.map(add, [1, 2], retries=-1)
    with pytest.raises(ValueError):
        lv.imap(add, [1, 2], chunksize=0)
    with pytest.raises(TypeError):
        lv.apply(42)
    with pytest.raises(TypeError):
        lv.map(42, [1])
    assert set(rc.outstanding) == before  # nothing was sent
    assert lv.apply_sync(add, 1) == 1


# --------------------------------------------------------------------------- clients
def test_disconnected_client_queued_tasks_are_dropped(job, rc, lv, tmp_path):
    path = tmp_path / "ran"
    c1 = pcluster.Client(str(job.path), timeout=10)
    try:
        lv1 = c1.load_balanced_view()
        n = len(IDS) * PREFETCH + 8
        ars = [lv1.apply(logged_nap, str(path), 1.0, i) for i in range(n)]
        wait_until(lambda: rc.queue_status()["unassigned"] >= 8, what="client 1's queued tasks")
        # a task of the other client waiting on one of client 1's queued tasks
        dep = lv.apply(add, 1, after=ars[-1].msg_id)
    finally:
        c1.close()
    for ar in ars:
        assert ar.done() or ar.exception(10) is not None
    # client 1's queued tasks are dropped: the farm empties once the sent ones finish
    wait_until(lambda: rc.queue_status()["unassigned"] <= 1, timeout=10, what="dropped queue")
    assert raises_remote(dep, DependencyError).ename == "DependencyFailed"
    # the other client's work goes on
    mine = [lv.apply(nap_id, 0.1) for _ in range(8)]
    assert {ar.get(T) for ar in mine} <= set(IDS)
    assert lv.map_sync(add, range(10), range(10)) == [2 * i for i in range(10)]
    wait_idle(rc)
    ran = [int(x) for x in tries(path)]
    assert len(ran) <= len(IDS) * PREFETCH, ran
    assert set(ran) == set(range(len(ran)))  # the first ones, those sent before the client left
    # and a fresh client gets results too
    with pcluster.Client(str(job.path), timeout=10) as c2:
        assert c2.load_balanced_view().apply_sync(add, 2, 3) == 5


def test_dependency_across_clients(job, rc, lv):
    with pcluster.Client(str(job.path), timeout=10) as c2:
        a = c2.load_balanced_view().apply(stamp, 0.8)
        b = lv.apply(stamp, 0, after=a.msg_id)
        a_end = a.get(T)[2]
    assert b.get(T)[1] >= a_end



# --------------------------------------------------------------------------- found while testing
def chatty_flaky(path):
    """Fails its first try, wherever that runs; prints first and runs long enough for the output
    to be streamed."""
    import os
    import time

    from pcluster.engine import engine_id

    first = not os.path.exists(path)
    with open(path, "a") as f:
        f.write(f"{engine_id}\n")
    print(f"trying on {engine_id}", flush=True)
    time.sleep(1.5)
    if first:
        raise RuntimeError(f"no luck on engine {engine_id}")
    return engine_id


def test_retried_task_with_streamed_output_blocking_get(lv, tmp_path):
    path = tmp_path / "tries"
    ar = lv.apply(chatty_flaky, str(path), retries=2)
    eid = ar.get(T)
    first = tries(path)[0]
    assert tries(path) == [first, eid] and eid != first
    assert ar.engine_id == eid
    assert f"trying on {eid}" in ar.stdout


def test_retried_task_with_streamed_output_resolves_on_its_own(lv, tmp_path):
    path = tmp_path / "tries"
    ar = lv.apply(chatty_flaky, str(path), retries=2)
    done, _ = concurrent.futures.wait([ar], timeout=30)  # the client's result thread settles it
    assert done, f"the retried task never resolved (it ran on {tries(path)})"
    assert ar.get(0) == ar.engine_id != tries(path)[0]


def test_map_get_timeout_bounds_the_whole_wait(lv):
    m = lv.map_async(nap, [0.8, 1.6, 2.4, 3.2], chunksize=1)  # one chunk per engine
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        m.get(1.0)  # the last chunk cannot be done before 3.2 s
    assert time.monotonic() - t0 < 3.0
    assert m.get(T) == [None] * 4
    m2 = lv.map_async(nap, [0.8, 1.6, 2.4, 3.2], chunksize=1)
    assert m2.wait(1.0) is False
    assert m2.wait(T) is True


def test_map_result_engine_ids_after_completion(lv):
    m = lv.map_async(nap_id, [0.3] * 8, chunksize=2)
    got = m.get(T)
    assert m.engine_id == got[::2]  # one engine per chunk, as ipyparallel
    assert [md["engine_id"] for md in m.metadata] == got[::2]


def test_map_unknown_keyword_is_an_error(lv):
    with pytest.raises(TypeError):
        lv.map(add, [1, 2], chunk_size=3)  # typo of chunksize
    with pytest.raises(TypeError):
        lv.map(add, [1, 2], blok=True)



def test_shutdown_aborts_queued_tasks(start_job):
    j = start_job(nranks=3)  # 2 engines
    c = pcluster.Client(str(j.path), timeout=10)
    sent = 2 * PREFETCH
    ars = [c.load_balanced_view().apply(nap, 1.0, i) for i in range(sent + 4)]
    wait_until(lambda: c.queue_status()["unassigned"] >= 4, what="queued tasks")
    c.shutdown(timeout=T)
    assert j.wait_exit(T) == 0
    assert [ar.get(10) for ar in ars[:sent]] == list(range(sent))  # sent ones finish
    for ar in ars[sent:]:
        e = raises_remote(ar, TaskAborted, timeout=10)
        assert "shutting down" in e.evalue


def test_idle_engines_take_turns_and_a_busy_engine_is_passed_over(rc):
    """Issue 12, requirement 4: on an idle cluster lv.apply rotates over the engines (least
    recently used first), and an engine running a direct request counts as loaded (a task went
    to an engine running a long cell while three sat idle)."""
    def where():
        import pcluster.engine

        return pcluster.engine.engine_id

    lv = rc.load_balanced_view()
    got = [lv.apply_sync(where) for _ in range(2 * len(rc.ids))]
    assert sorted(got) == sorted(rc.ids * 2), got
    busy = rc[0].execute("import time; time.sleep(4)", block=False)
    time.sleep(0.3)
    got = [lv.apply_sync(where) for _ in range(6)]
    assert 0 not in got and sorted(set(got)) == rc.ids[1:], got
    busy.get(30)


# --------------------------------------------------------------------------- ipyparallel's Dependency
def test_dependency_objects_and_string_ids(lv):
    """ipp.Dependency(ids, all=, success=, failure=) in after=/follow=, and msg_ids given as the
    strings ipyparallel uses."""
    bad = lv.apply(boom, 1)
    good = lv.apply(add, 1)
    assert raises_remote(bad).ename == "ValueError"
    # failure=True: met once they finished, whatever their outcome
    after_either = lv.apply(add, 2, after=pcluster.Dependency([bad, good], failure=True))
    assert after_either.get(T) == 2
    # the default (success only) fails with the failed dependency
    dep = pcluster.Dependency([bad])
    assert dep == {bad.msg_id} and (dep.all, dep.success, dep.failure) == (True, True, False)
    assert raises_remote(lv.apply(add, 3, after=dep), DependencyError).ename == "DependencyFailed"
    assert lv.apply(add, 4, after=str(good.msg_id)).get(T) == 4
    assert lv.apply(add, 5, follow=pcluster.Dependency(str(good.msg_id))).get(T) == 5
    with pytest.raises(ValueError, match=r"all=False\) \(any one of them\) is not supported"):
        lv.apply(add, 6, after=pcluster.Dependency([good], all=False))
    with pytest.raises(ValueError, match="success=False"):
        lv.apply(add, 6, after=pcluster.Dependency([good], success=False, failure=True))
    with pytest.raises(ValueError, match="follow=Dependency"):
        lv.apply(add, 6, follow=pcluster.Dependency([good], failure=True))
    with pytest.raises(ValueError, match="not a task id"):
        lv.apply(add, 6, after="abc")


def test_view_history(rc):
    """lv.history: the msg_ids of the tasks sent through this view, in order (a map: its chunks)."""
    lv2 = rc.load_balanced_view()
    a = lv2.apply(add, 1)
    m = lv2.map(add, range(6), chunksize=2)
    a.get(T), m.get(T)
    assert lv2.history == [a.msg_id] + m.msg_ids
    assert set(lv2.history) <= set(rc.history)
