"""AsyncResult against the shared job (4 engines): waiting, timeouts, callbacks, futures and
asyncio interplay, iteration, metadata and timing, progress bars, Ctrl-C, rc.wait/outstanding.

Timing is only ever checked against generous sanity bounds (the machine is small and shared):
the tests assert order of events ("item 0 arrived before the request finished"), not speed.
"""

import asyncio
import concurrent.futures
import os
import signal
import sys
import threading
import time

import cloudpickle
import pytest

import pcluster
from pcluster import _progress

# Functions defined here must travel by value: the engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDS = [0, 1, 2, 3]
LONG = 30  # bound on any wait for work that should finish in about a second


def whoami():
    from pcluster.engine import engine_id

    return engine_id


def nap(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


def nap_on(engine, seconds):
    """Engine `engine` sleeps `seconds`, the others return at once; every engine returns its id."""
    import time

    from pcluster.engine import engine_id

    if engine_id == engine:
        time.sleep(seconds)
    return engine_id


def fail_on(engines):
    from pcluster.engine import engine_id

    if engine_id in engines:
        raise ValueError(f"bad engine {engine_id}")
    return engine_id


def settle(rc):
    """Wait until every engine has finished whatever earlier tests left running on it."""
    assert rc[:].apply_async(whoami).get(LONG) == IDS


def wait_until(pred, timeout=LONG, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


# --------------------------------------------------------------------------- basics
def test_apply_async_is_a_future(rc):
    ar = rc[:].apply_async(whoami)
    assert isinstance(ar, pcluster.AsyncResult)
    assert isinstance(ar, concurrent.futures.Future)
    assert ar.get(LONG) == IDS
    assert ar.ready() and ar.done() and ar.successful()
    assert ar.r == IDS
    assert ar.result() == IDS
    assert ar.result(5) == IDS
    assert ar.exception() is None
    assert ar.wait(0) is True and ar.wait() is True
    assert len(ar) == 4
    assert [ar[i] for i in range(4)] == IDS
    assert ar[-1] == 3
    assert "finished" in repr(ar)


def test_single_engine_result_is_scalar(rc):
    ar = rc[2].apply_async(whoami)
    assert ar.get(LONG) == 2
    assert ar.r == 2 and ar.result() == 2
    assert len(ar) == 1
    with pytest.raises(TypeError):
        ar[0]
    assert ar.get_dict() == {2: 2}


def _iterate(ar):
    try:
        return list(ar)
    except TypeError:
        return "not iterable"


def test_single_engine_iteration_is_consistent(rc):
    # A single-engine result has one value: iterating yields that value (len(ar) == 1), or is
    # refused with TypeError as in ipyparallel. Either way the shape of the value must not
    # matter: a list or str result must not be iterated element by element.
    for value in (2, [1, 2], "abc", (7, 8)):
        ar = rc[2].apply_async(lambda v: v, value)
        assert ar.get(LONG) == value
        assert _iterate(ar) in ([value], "not iterable"), f"iterating rc[2]'s result {value!r} gave {_iterate(ar)!r}"
    kinds = {_iterate(rc[1].apply_async(lambda v: v, v)) == "not iterable" for v in (2, [1, 2])}
    assert len(kinds) == 1, "single-engine iteration depends on the type of the result"


def test_subset_view_results_in_target_order(rc):
    ar = rc[[3, 1]].apply_async(whoami)
    assert ar.get(LONG) == [3, 1]
    assert list(ar) == [3, 1]
    assert ar.get_dict() == {3: 3, 1: 1}


def test_view_block_false_returns_asyncresults(rc):
    dv = rc[:]
    assert dv.block is False  # ipyparallel's default
    ars = {
        "apply": dv.apply(whoami),
        "execute": dv.execute("ar_blk = 5"),
        "push": dv.push({"ar_pushed": 7}),
        "map": dv.map(lambda x: x * 3, range(6)),
        "scatter": dv.scatter("ar_sc", list(range(8))),
    }
    for name, ar in ars.items():
        assert isinstance(ar, pcluster.AsyncResult), name
    assert ars["apply"].get(LONG) == IDS
    assert ars["execute"].get(LONG) == [None] * 4
    assert ars["push"].get(LONG) == [None] * 4
    assert ars["map"].get(LONG) == [0, 3, 6, 9, 12, 15]
    assert ars["scatter"].get(LONG) is None
    pulled = dv.pull(["ar_blk", "ar_pushed"])
    assert isinstance(pulled, pcluster.AsyncResult)
    assert pulled.get(LONG) == [[5, 7]] * 4
    gathered = dv.gather("ar_sc")
    assert isinstance(gathered, pcluster.AsyncResult)
    assert gathered.get(LONG) == list(range(8))
    # block= on a call overrides the view's default.
    assert dv.pull("ar_blk", block=True) == [5] * 4
    assert dv.apply_sync(whoami) == IDS


# --------------------------------------------------------------------------- timeouts
def test_get_timeout_then_later_result(rc):
    settle(rc)
    ar = rc[:].apply_async(nap, 1.5, "late")
    with pytest.raises(TimeoutError):
        ar.get(0.05)
    assert not ar.ready()
    assert not ar.done()
    assert ar.wait(0.05) is False
    with pytest.raises(RuntimeError):
        ar.successful()
    with pytest.raises(TimeoutError):
        ar.result(0.01)
    with pytest.raises(TimeoutError):
        ar.exception(0.01)
    assert "pending" in repr(ar)
    # The work went on: the same result can be collected.
    assert ar.get(LONG) == ["late"] * 4
    assert ar.successful()


def test_wait_returns_bool(rc):
    settle(rc)
    ar = rc[1].apply_async(nap, 1.0, 1)
    assert ar.wait(0.01) is False
    assert ar.wait(LONG) is True
    assert ar.ready()
    assert ar.get(0) == 1


def test_cancel_returns_false_and_work_goes_on(rc):
    ar = rc[0].apply_async(nap, 0.3, "done anyway")
    assert ar.cancel() is False
    assert not ar.cancelled()
    assert ar.get(LONG) == "done anyway"
    assert ar.cancel() is False
    assert not ar.cancelled()


# --------------------------------------------------------------------------- callbacks and futures
def test_done_callback_runs_without_polling(rc):
    settle(rc)
    seen = []
    fired = threading.Event()

    def cb(f):
        seen.append((f, f.result(), threading.current_thread() is threading.main_thread()))
        fired.set()

    ar = rc[:].apply_async(nap, 0.5, "cb")
    ar.add_done_callback(cb)
    # Nobody calls into the AsyncResult: a background thread must resolve it.
    assert fired.wait(LONG), "the done callback never ran without polling"
    assert len(seen) == 1
    f, value, on_main = seen[0]
    assert f is ar
    assert value == ["cb"] * 4
    assert not on_main
    # A callback added after completion runs at once, in the caller's thread.
    late = []
    ar.add_done_callback(lambda f: late.append(f.result()))
    assert late == [["cb"] * 4]


def test_done_callback_sees_remote_error(rc):
    got = []
    fired = threading.Event()

    def cb(f):
        got.append(f.exception())
        fired.set()

    ar = rc[3].apply_async(fail_on, [3])
    ar.add_done_callback(cb)
    assert fired.wait(LONG)
    assert isinstance(got[0], pcluster.RemoteError)
    assert got[0].engine_id == 3
    assert got[0].ename == "ValueError"


def test_concurrent_futures_wait(rc):
    settle(rc)
    ars = [rc[i].apply_async(nap, 0.2 * i, i) for i in IDS]
    done, not_done = concurrent.futures.wait(ars, timeout=LONG)
    assert not not_done
    assert done == set(ars)
    assert [a.result() for a in ars] == IDS

    slow = rc[0].apply_async(nap, 3.0, "slow")
    quick = rc[1].apply_async(nap, 0.0, "quick")
    done, not_done = concurrent.futures.wait([slow, quick], timeout=LONG, return_when=concurrent.futures.FIRST_COMPLETED)
    assert quick in done
    assert slow in not_done
    done, not_done = concurrent.futures.wait([slow], timeout=0.01)
    assert slow in not_done  # a short wait times out without error
    assert slow.get(LONG) == "slow"


def test_as_completed_yields_fast_first(rc):
    settle(rc)
    slow = rc[0].apply_async(nap, 2.0, "slow")
    quick = [rc[i].apply_async(nap, 0.0, i) for i in (1, 2, 3)]
    order = [f for f in concurrent.futures.as_completed([slow, *quick], timeout=LONG)]
    assert set(order) == {slow, *quick}
    assert order[-1] is slow
    assert slow.result() == "slow"
    assert sorted(f.result() for f in quick) == [1, 2, 3]


def test_many_outstanding_requests(rc):
    ars = [rc[i % 4].apply_async(lambda x: x * x, i) for i in range(60)]
    ars.append(rc[:].apply_async(whoami))
    got = {f for f in concurrent.futures.as_completed(ars, timeout=LONG)}
    assert got == set(ars)
    assert [a.get(0) for a in ars[:-1]] == [i * i for i in range(60)]
    assert ars[-1].get(0) == IDS


# --------------------------------------------------------------------------- asyncio
def test_await_and_gather_in_asyncio_run(rc):
    dv = rc[:]

    async def main():
        one = await dv.apply_async(whoami)
        single = await rc[2].apply_async(whoami)
        many = await asyncio.gather(*[rc[i % 4].apply_async(lambda x: x + 1, i) for i in range(20)])
        mapped = await dv.map_async(lambda x: -x, range(10))
        return one, single, many, mapped

    one, single, many, mapped = asyncio.run(asyncio.wait_for(main(), LONG))
    assert one == IDS
    assert single == 2
    assert many == [i + 1 for i in range(20)]
    assert mapped == [-x for x in range(10)]


def test_await_does_not_block_the_loop(rc):
    settle(rc)

    async def main():
        ticks = 0
        task = asyncio.ensure_future(rc[0].apply_async(nap, 1.0, "awaited"))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        return ticks, await task

    ticks, value = asyncio.run(asyncio.wait_for(main(), LONG))
    assert value == "awaited"
    assert ticks > 1  # the loop kept running other work while the request was pending


def test_await_remote_error(rc):
    async def main():
        with pytest.raises(pcluster.CompositeError) as ei:
            await rc[:].apply_async(fail_on, [1, 2])
        return ei.value

    e = asyncio.run(asyncio.wait_for(main(), LONG))
    assert [x.engine_id for x in e.elist] == [1, 2]


def test_blocking_calls_inside_running_asyncio_loop(rc):
    dv = rc[:]

    async def main():
        assert asyncio.get_running_loop().is_running()
        a = dv.apply_sync(whoami)
        b = rc[1].apply_async(nap, 0.2, "b").get(10)
        c = dv.map_sync(lambda x: x * 2, range(8))
        d = dv.apply_async(nap, 0.2, "d").get(10)
        # and awaiting still works in the same loop afterwards
        e = await dv.apply_async(whoami)
        return a, b, c, d, e

    a, b, c, d, e = asyncio.run(main())
    assert a == IDS
    assert b == "b"
    assert c == [x * 2 for x in range(8)]
    assert d == ["d"] * 4
    assert e == IDS


# --------------------------------------------------------------------------- iteration
def test_map_iteration_yields_early_items_before_slow_engine(rc):
    settle(rc)
    n = 8
    last = n - 1  # mapped on engine 3, which therefore finishes last

    ar = rc[:].map_async(lambda x: (time.sleep(3.0) if x == last else None, x)[1], range(n))
    seen = []
    for x in ar:
        seen.append((x, ar.done()))
    assert [x for x, _ in seen] == list(range(n))
    # The first engines' items came while engine 3 was still sleeping.
    assert seen[0][1] is False, f"item 0 was only yielded after the whole map finished: {seen}"
    assert not any(done for x, done in seen if x < 6), seen
    assert ar.done() and ar.get(0) == list(range(n))


def test_apply_iteration_in_target_order_as_they_arrive(rc):
    settle(rc)
    ar = rc[:].apply_async(nap_on, 3, 3.0)
    seen = []
    for x in ar:
        seen.append((x, ar.done()))
    assert [x for x, _ in seen] == IDS
    assert seen[0][1] is False, f"engine 0's result was only yielded after engine 3 finished: {seen}"
    assert ar.done()


def test_iteration_order_is_target_order_even_if_first_engine_is_slowest(rc):
    settle(rc)
    ar = rc[:].apply_async(nap_on, 0, 1.0)
    assert list(ar) == IDS
    ar = rc[[2, 0, 1]].map_async(lambda x: (time.sleep(0.5) if x == 0 else None, x)[1], range(6))
    assert list(ar) == list(range(6))


def slow_fail_on(engine, seconds):
    import time

    from pcluster.engine import engine_id

    if engine_id == engine:
        time.sleep(seconds)
        raise ValueError(f"bad engine {engine_id}")
    return engine_id


def _engines_of(e):
    return [x.engine_id for x in e.elist] if isinstance(e, pcluster.CompositeError) else [e.engine_id]


def test_iteration_raises_remote_error_at_failing_engine(rc):
    settle(rc)
    # Engine 3 fails late: the others' results are yielded first, then its error is raised.
    ar = rc[:].apply_async(slow_fail_on, 3, 2.0)
    got = []
    with pytest.raises(pcluster.RemoteError) as ei:
        for x in ar:
            got.append(x)
    assert got == [0, 1, 2]
    assert _engines_of(ei.value) == [3]
    with pytest.raises(pcluster.CompositeError):
        ar.get(LONG)


def test_iterating_a_failed_result_raises(rc):
    ar = rc[:].apply_async(fail_on, [2])
    assert ar.wait(LONG)
    got = []
    with pytest.raises(pcluster.RemoteError) as ei:
        for x in ar:
            got.append(x)
    assert got in ([], [0, 1])  # nothing, or the results before the failing engine
    assert _engines_of(ei.value) == [2]


def test_iterating_a_finished_result(rc):
    ar = rc[:].map_async(lambda x: x + 100, range(5))
    ar.wait(LONG)
    assert list(ar) == [100, 101, 102, 103, 104]
    assert list(ar) == [100, 101, 102, 103, 104]  # again


# --------------------------------------------------------------------------- get_dict
def test_get_dict(rc):
    assert rc[:].apply_async(whoami).get_dict(LONG) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert rc[[1, 3]].apply_async(lambda: whoami() * 10).get_dict(LONG) == {1: 10, 3: 30}
    assert rc[0].apply_async(whoami).get_dict(LONG) == {0: 0}
    # A map's result is not one value per engine.
    with pytest.raises(ValueError):
        rc[:].map_async(lambda x: x, range(10)).get_dict(LONG)


def test_get_dict_times_out_while_pending(rc):
    settle(rc)
    ar = rc[:].apply_async(nap, 1.0, 0)
    with pytest.raises(TimeoutError):
        ar.get_dict(0.01)
    assert ar.get_dict(LONG) == {i: 0 for i in IDS}


# --------------------------------------------------------------------------- metadata and timing
def test_metadata_fields_and_timestamps(rc):
    settle(rc)
    ar = rc[:].apply_async(nap, 0.2, "md")
    # While pending: status per engine, no engine times yet for engines that have not replied.
    md = ar.metadata
    assert isinstance(md, list) and len(md) == 4
    assert [m["engine_id"] for m in md] == IDS
    for m in md:
        if m["status"] == "pending":
            assert m["started"] is None and m["completed"] is None and m["received"] is None
    assert ar.get(LONG) == ["md"] * 4
    md = ar.metadata
    assert [m["engine_id"] for m in md] == IDS
    for m in md:
        for key in ("engine_id", "status", "submitted", "started", "completed", "received", "stdout", "stderr", "execute_result", "error"):
            assert key in m, key
        assert m["status"] == "ok"
        assert m["error"] is None
        assert m["execute_result"] is None
        assert m["stdout"] == "" and m["stderr"] == ""
        assert m["submitted"] <= m["started"] <= m["completed"] <= m["received"], m
        assert m["completed"] - m["started"] >= 0.19  # the engine slept 0.2 s
        assert m["received"] - m["submitted"] < 60
    assert ar["engine_id"] == IDS
    assert ar["status"] == ["ok"] * 4
    assert ar["stdout"] == [""] * 4


def test_metadata_single_engine_is_a_dict(rc):
    ar = rc[1].apply_async(whoami)
    ar.get(LONG)
    md = ar.metadata
    assert isinstance(md, dict)
    assert md["engine_id"] == 1 and md["status"] == "ok"
    assert md["submitted"] <= md["started"] <= md["completed"] <= md["received"]
    assert ar["engine_id"] == 1
    assert ar["stdout"] == ""


def test_metadata_of_failed_engines(rc):
    ar = rc[:].apply_async(fail_on, [0, 3])
    assert ar.wait(LONG)
    assert not ar.successful()
    md = ar.metadata
    assert [m["status"] for m in md] == ["error", "ok", "ok", "error"]
    assert md[1]["error"] is None
    for i in (0, 3):
        e = md[i]["error"]
        assert isinstance(e, pcluster.RemoteError)
        assert e.engine_id == i and e.ename == "ValueError" and f"bad engine {i}" in e.evalue


def test_elapsed_wall_time_serial_time(rc):
    settle(rc)
    ar = rc[:].apply_async(nap, 0.3)
    assert 0 <= ar.elapsed < 60  # while pending: time so far
    ar.get(LONG)
    assert ar.wall_time >= 0.29
    assert ar.serial_time >= 4 * 0.29
    assert ar.serial_time >= ar.wall_time
    assert ar.elapsed >= ar.wall_time
    assert ar.elapsed < 60 and ar.wall_time < 60 and ar.serial_time < 240
    # Once finished, elapsed is frozen.
    e = ar.elapsed
    time.sleep(0.05)
    assert ar.elapsed == e


def test_progress_counts_replied_engines(rc):
    settle(rc)
    ar = rc[:].apply_async(nap_on, 3, 2.0)
    assert 0 <= ar.progress <= 4
    assert wait_until(lambda: ar.progress >= 3 or ar.done()), "engines 0-2 never counted as done"
    if not ar.done():
        assert ar.progress == 3
    ar.get(LONG)
    assert ar.progress == 4


# --------------------------------------------------------------------------- errors
def test_remote_error_single_engine(rc):
    ar = rc[1].apply_async(fail_on, [1])
    with pytest.raises(pcluster.RemoteError) as ei:
        ar.get(LONG)
    e = ei.value
    assert not isinstance(e, pcluster.CompositeError)
    assert e.engine_id == 1
    assert e.ename == "ValueError" and e.evalue == "bad engine 1"
    assert "fail_on" in e.traceback
    assert ar.exception() is e or isinstance(ar.exception(), pcluster.RemoteError)
    assert not ar.successful()
    assert ar.ready()
    lines = e._render_traceback_()
    assert lines[0] == "[1:apply] ValueError: bad engine 1"
    with pytest.raises(pcluster.RemoteError):
        ar.r


def test_composite_error_and_raise_exception(rc):
    ar = rc[:].apply_async(fail_on, [1, 3])
    with pytest.raises(pcluster.CompositeError) as ei:
        ar.get(LONG)
    e = ei.value
    assert [x.engine_id for x in e.elist] == [1, 3]
    assert all(isinstance(x, pcluster.RemoteError) for x in e.elist)
    assert isinstance(ar.exception(), pcluster.CompositeError)
    with pytest.raises(pcluster.RemoteError) as first:
        e.raise_exception()
    assert first.value is e.elist[0]
    with pytest.raises(pcluster.RemoteError) as second:
        e.raise_exception(1)
    assert second.value is e.elist[1] and second.value.engine_id == 3
    shown = "\n".join(e._render_traceback_())
    assert "[1:apply] ValueError: bad engine 1" in shown
    assert "[3:apply] ValueError: bad engine 3" in shown
    # The failing request leaves the job serving.
    assert rc[:].apply_sync(whoami) == IDS


# --------------------------------------------------------------------------- progress bars
def test_wait_interactive_shows_bar_when_enabled(rc, capsys, monkeypatch):
    settle(rc)
    monkeypatch.setattr(_progress, "enabled", lambda: True)
    ar = rc[:].apply_async(nap, 0.6, "w")
    capsys.readouterr()
    assert ar.wait_interactive(interval=0.05, timeout=LONG) is None
    assert ar.done() and ar.get(0) == ["w"] * 4
    err = capsys.readouterr().err
    assert "apply" in err and "engine" in err, err  # tqdm's bar: desc and unit


def test_wait_interactive_timeout(rc, monkeypatch):
    settle(rc)
    monkeypatch.setattr(_progress, "enabled", lambda: True)
    ar = rc[:].apply_async(nap, 2.0, "t")
    with pytest.raises(TimeoutError):
        ar.wait_interactive(interval=0.05, timeout=0.2)
    assert ar.wait_interactive(interval=0.05, timeout=LONG, return_value=True) is True
    assert ar.get(0) == ["t"] * 4


def test_wait_interactive_quiet_when_noninteractive(rc, capsys, monkeypatch):
    monkeypatch.setenv("PCLUSTER_NONINTERACTIVE", "1")
    ar = rc[:].apply_async(nap, 0.3, "q")
    capsys.readouterr()
    ar.wait_interactive(interval=0.05, timeout=LONG)
    assert ar.get(0) == ["q"] * 4
    assert capsys.readouterr().err == ""


def test_long_blocking_get_shows_bar_when_interactive(rc, capsys, monkeypatch):
    settle(rc)
    monkeypatch.setattr(_progress, "enabled", lambda: True)
    capsys.readouterr()
    assert rc[:].apply_sync(nap, 2.8, "bar") == ["bar"] * 4  # longer than PROGRESS_AFTER (2 s)
    err = capsys.readouterr().err
    assert "apply" in err, err


def test_client_wait_interactive(rc, capsys, monkeypatch):
    settle(rc)
    monkeypatch.setattr(_progress, "enabled", lambda: True)
    ars = [rc[i].apply_async(nap, 0.3, i) for i in IDS]
    capsys.readouterr()
    assert rc.wait_interactive(interval=0.05, timeout=LONG) is True
    assert [a.get(0) for a in ars] == IDS
    assert "requests" in capsys.readouterr().err
    slow = rc[0].apply_async(nap, 2.0)
    assert rc.wait_interactive([slow], interval=0.05, timeout=0.1) is False
    assert rc.wait_interactive(slow, interval=0.05, timeout=LONG) is True


# --------------------------------------------------------------------------- client wait / outstanding
def test_client_wait_and_outstanding(rc):
    settle(rc)
    assert rc.outstanding == set()
    a = rc[:].apply_async(nap, 1.5, "a")
    b = rc[2].apply_async(nap, 0.1, "b")
    out = rc.outstanding
    assert a.msg_id in out
    assert out <= {a.msg_id, b.msg_id}
    assert rc.wait(timeout=0.05) is False
    assert rc.wait(b, timeout=LONG) is True
    assert b.done()
    assert rc.wait(timeout=LONG) is True
    assert a.done() and a.get(0) == ["a"] * 4
    assert rc.outstanding == set()
    assert rc.wait() is True  # nothing outstanding: at once
    c = rc[1].apply_async(nap, 0.2, "c")
    d = rc[3].apply_async(nap, 0.2, "d")
    assert rc.wait([c, d], timeout=LONG) is True
    assert rc.outstanding == set()


def test_outstanding_shrinks_as_requests_finish(rc):
    settle(rc)
    ars = [rc[i].apply_async(nap, 0.3 * (i + 1), i) for i in IDS]
    sizes = []
    deadline = time.monotonic() + LONG
    while rc.outstanding and time.monotonic() < deadline:
        sizes.append(len(rc.outstanding))
        time.sleep(0.02)
    assert rc.outstanding == set()
    assert sizes and sizes[0] <= 4
    assert sizes == sorted(sizes, reverse=True)  # never grows
    assert [a.get(0) for a in ars] == IDS


# --------------------------------------------------------------------------- Ctrl-C
def _interrupt_soon(delay=0.3):
    t = threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT))
    t.start()
    return t


def test_ctrl_c_interrupts_blocking_get_and_result_survives(rc):
    settle(rc)
    ar = rc[:].apply_async(nap, 3.0, "survived")
    timer = _interrupt_soon()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ar.get()
    finally:
        timer.cancel()
        timer.join()
    assert time.monotonic() - t0 < 2.0, "Ctrl-C did not end the blocking get promptly"
    assert not ar.done()
    # The remote work continued; the same AsyncResult is collected later.
    assert ar.get(LONG) == ["survived"] * 4
    assert rc[:].apply_sync(whoami) == IDS


def test_ctrl_c_interrupts_blocking_apply_and_job_still_answers(rc):
    settle(rc)
    dv = rc[:]
    timer = _interrupt_soon()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            dv.apply_sync(nap, 3.0, "x")
    finally:
        timer.cancel()
        timer.join()
    assert time.monotonic() - t0 < 2.0, "Ctrl-C did not end the blocking apply promptly"
    # The interrupted request is still outstanding and finishes on its own.
    assert len(rc.outstanding) == 1
    assert rc.wait(timeout=LONG) is True
    assert rc.outstanding == set()
    assert dv.apply_sync(whoami) == IDS
    assert rc[2].apply_async(whoami).get(LONG) == 2
