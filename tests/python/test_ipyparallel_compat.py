"""ipyparallel-style code runs unchanged with `import pcluster as ipp` (issue 12, requirement 7).

Each test is a session written as ipyparallel's documentation and notebooks write it (the
DirectView and task interface tutorials, AsyncResult, dependencies, the hub's results): written
by us from ipyparallel's documented behaviour, run against a real job. Only the Client's
connection differs (the job's connection file)."""

import os
import time

import pytest

import pcluster as ipp

T = 60


@pytest.fixture
def rc(job):
    c = ipp.Client(str(job.path), timeout=10)
    yield c
    c.close()


def test_direct_interface_tutorial(rc):
    dview = rc[:]
    n = len(rc.ids)
    # Quick and easy parallelism
    serial_result = list(map(lambda x: x**10, range(32)))
    parallel_result = dview.map_sync(lambda x: x**10, range(32))
    assert serial_result == parallel_result

    @dview.remote(block=True)
    def getpid():
        import os

        return os.getpid()

    assert len(set(getpid())) == n

    # apply is non-blocking by default: an AsyncResult
    ar = dview.apply(lambda x: x * 2, 21)
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get(T) == [42] * n
    assert dview.apply_sync(lambda: 1) == [1] * n
    ar = rc[0].apply_async(lambda x, y: x + y, 1, y=2)
    assert ar.get(T) == 3

    # blocking views
    dview.block = True
    assert dview.apply(lambda: "x") == ["x"] * n
    dview.block = False

    # Moving Python objects around
    dview.push(dict(a=1.03234, b=3453)).get(T)
    assert dview.pull("a").get(T) == [1.03234] * n
    assert dview.pull(("b", "a"), block=True) == [[3453, 1.03234]] * n
    dview["c"] = 5
    assert dview["c"] == [5] * n
    assert rc[0]["a"] == 1.03234

    # Scatter and gather
    dview.scatter("x", range(16)).get(T)
    assert sum(len(part) for part in dview["x"]) == 16
    assert list(dview.gather("x", block=True)) == list(range(16))

    # execute and a remote namespace
    ar = dview.execute("y = [i * 2 for i in x]")
    ar.get(T)
    assert list(dview.gather("y").get(T)) == [2 * i for i in range(16)]
    with dview.sync_imports(quiet=True):
        import math  # noqa: F401
    assert dview.apply_sync(lambda: math.pi) == [pytest.approx(3.14159, rel=1e-4)] * n  # noqa: F821

    # Parallel exceptions
    try:
        dview.execute("1/0", block=True)
    except ipp.error.CompositeError as e:
        assert len(e.elist) == n
        with pytest.raises(ipp.error.RemoteError, match="ZeroDivisionError"):
            e.raise_exception()
    else:
        pytest.fail("no CompositeError")


def test_task_interface_tutorial(rc):
    lview = rc.load_balanced_view()
    lview.block = True
    assert lview.map(lambda x: x**10, range(32)) == [x**10 for x in range(32)]
    lview.block = False

    ar = lview.apply(time.sleep, 0.2)
    assert not ar.ready()
    ar.wait(T)
    assert ar.ready() and ar.successful()

    # dependencies: after=, follow=, temp_flags, depend, require
    a1 = lview.apply(lambda: 1)
    a2 = lview.apply(lambda: 2, after=[a1])
    assert a2.get(T) == 2
    with lview.temp_flags(after=a2, retries=2):
        a3 = lview.apply(lambda: 3)
    assert a3.get(T) == 3

    @ipp.require("os")
    def pid():
        return os.getpid()  # noqa: F821 - imported on the engine by require

    assert isinstance(lview.apply_sync(pid), int)

    @lview.parallel(block=True)
    def double(xs):
        return [2 * x for x in xs]

    assert list(double(range(8))) == [0, 2, 4, 6, 8, 10, 12, 14]
    amr = lview.map_async(lambda x: x + 1, range(10))
    assert list(amr) == list(range(1, 11))
    assert amr.elapsed >= 0 and len(amr.msg_ids) >= 1


def test_results_and_hub(rc, job):
    dview = rc[:]
    ar = dview.apply(lambda: "hello")
    ar.wait(T)
    msg_id = ar.msg_ids[0]
    assert rc.get_result(msg_id).get(T) == ["hello"] * len(rc.ids)
    assert msg_id in rc.history
    assert rc.result_status(ar.msg_ids)["completed"] == ar.msg_ids
    md = ar.metadata
    assert all(m["status"] == "ok" for m in md)
    rc.wait(timeout=T)
    assert not rc.outstanding
    # a later session on the same cluster
    rc2 = ipp.Client(str(job.path))
    try:
        assert rc2.get_result(msg_id, block=True) == ["hello"] * len(rc.ids)
        recs = rc2.db_query({"msg_id": msg_id}, keys=["completed", "engine_id"])
        assert recs[0]["engine_id"] == rc.ids
    finally:
        rc2.close()


def test_asyncresult_and_client_habits(rc):
    assert rc.ids == list(range(len(rc)))
    ar = rc[:].apply_async(time.sleep, 0.1)
    ar.wait(T)
    assert ar.get_dict(T) == {i: None for i in rc.ids}
    assert ar.wall_time >= 0.1 and ar.serial_time >= 0.1 * len(rc)
    status = rc.queue_status()
    assert set(rc.ids) <= set(status) and "unassigned" in status
    ex = rc.executor()
    assert list(ex.map(abs, [-1, -2])) == [1, 2]
