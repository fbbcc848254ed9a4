"""ipyparallel habits that work unchanged (issue 12, requirement 2, first part): negative engine
indices, broadcast_view, activate, wait_for_engines, executors, @view.remote and ipp.remote.
Written from ipyparallel's documented behaviour; run against a real job."""

import concurrent.futures

import pytest

import pcluster as ipp

from conftest import NUM_ENGINES


def square(x):
    return x * x


def test_negative_indices_count_from_the_last_engine(rc):
    ids = rc.ids
    assert rc[-1].targets == ids[-1]
    assert rc[-1].apply_sync(lambda: 7) == 7
    assert rc[-2:].targets == ids[-2:]
    assert rc[-2:].apply_sync(lambda: 1) == [1, 1]
    with pytest.raises(IndexError, match=f"no engine -{NUM_ENGINES + 1}: this job has {NUM_ENGINES} live engines"):
        rc[-(NUM_ENGINES + 1)]


def test_broadcast_view_is_the_collective_direct_view(rc):
    bv = rc.broadcast_view()
    assert isinstance(bv, ipp.DirectView)
    bv.push({"bv_a": 5}, block=True)
    assert bv.pull("bv_a", block=True) == [5] * NUM_ENGINES
    assert rc.broadcast_view(targets=[0, 2], is_coalescing=True).apply_sync(lambda: 2) == [2, 2]


def test_activate_outside_ipython_says_where_it_works(rc):
    with pytest.raises(RuntimeError, match="inside IPython or Jupyter"):
        rc.activate()


def test_wait_for_engines(rc):
    assert rc.wait_for_engines(NUM_ENGINES) is None
    assert rc.wait_for_engines() is None
    fut = rc.wait_for_engines(NUM_ENGINES, block=False)
    assert fut.done() and fut.result() is None
    with pytest.raises(TimeoutError, match=rf"has {NUM_ENGINES} live engines and will never have 9: .*mpirun -n 10"):
        rc.wait_for_engines(9, timeout=1)


def test_executor_submit_map_and_shutdown(rc):
    ex = rc.executor()
    assert isinstance(ex, concurrent.futures.Executor)
    futs = [ex.submit(square, i) for i in range(20)]
    assert sorted(f.result(30) for f in concurrent.futures.as_completed(futs, timeout=30)) == [i * i for i in range(20)]
    assert list(ex.map(square, range(50), chunksize=7)) == [i * i for i in range(50)]
    assert list(ex.map(pow, [2, 3], [3, 2])) == [8, 9]
    slow = ex.submit(__import__("time").sleep, 0.5)
    ex.shutdown(wait=True)
    assert slow.done()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with rc.executor() as ex2:  # the context manager waits too
        f = ex2.submit(square, 3)
    assert f.done() and f.result() == 9


def test_executor_map_timeout_comes_when_iterating(rc):
    ex = rc.load_balanced_view().executor
    it = ex.map(__import__("time").sleep, [1.0, 1.0], timeout=0.05)
    with pytest.raises(TimeoutError):
        list(it)
    ex.shutdown(wait=True)


def test_direct_view_executor_runs_on_every_engine_of_the_view(rc):
    ex = rc[:2].executor
    assert ex.submit(square, 4).result(30) == [16, 16]
    assert list(ex.map(square, [1, 2])) == [[1, 1], [4, 4]]


def test_view_remote_decorator(rc):
    dv = rc[:]

    @dv.remote(block=True)
    def ident(x):
        return x + 1

    assert ident(1) == [2] * NUM_ENGINES
    assert ident.__name__ == "ident"

    @dv.remote(block=False)
    def later(x):
        return x * 2

    ar = later(3)
    assert isinstance(ar, ipp.AsyncResult) and ar.get(30) == [6] * NUM_ENGINES

    lv = rc.load_balanced_view()

    @lv.remote(block=True, retries=1)
    def one(x):
        return x - 1

    assert one(5) == 4
    assert one.map(range(4)) == [-1, 0, 1, 2]


def test_ipp_remote_follows_the_view_block_flag(rc):
    dv = rc[0]
    sq = ipp.remote(dv)(square)
    dv.block = False
    try:
        ar = sq(3)
        assert ar.get(30) == 9
    finally:
        dv.block = True
    assert sq(4) == 16


def test_flags_on_a_direct_view_are_refused_with_the_reason(rc):
    with pytest.raises(TypeError, match="only a load-balanced view has them"):
        ipp.remote(rc[:], retries=2)(square)


def test_view_wait(rc):
    dv = rc[:]
    ar = dv.apply_async(__import__("time").sleep, 0.2)
    assert dv.wait([ar], timeout=30) is True and ar.done()
    slow = dv.apply_async(__import__("time").sleep, 2)
    assert dv.wait([slow], timeout=0.05) is False
    assert dv.wait(timeout=30) is True and slow.done()


def test_load_balanced_view_wait(rc):
    lv = rc.load_balanced_view()
    ars = [lv.apply_async(square, i) for i in range(8)]
    assert lv.wait(ars, timeout=30) is True
    assert [a.get() for a in ars] == [i * i for i in range(8)]
