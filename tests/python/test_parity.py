"""ipyparallel habits that work unchanged (issue 12, requirement 2, in part): negative engine
indices, broadcast_view, activate, wait_for_engines, executors, @view.remote and ipp.remote,
@view.parallel and ipp.parallel, set_flags/temp_flags on a DirectView, Reference, require,
view.run, view.sync_imports, AsyncResult.msg_ids.
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


def test_ipyparallel_style_non_blocking_code_runs_unchanged(rc):
    """ipyparallel's DirectView does not block by default: its everyday spellings work as written."""
    dv = rc[:]
    assert dv.block is False and rc[0].block is False and rc.direct_view().block is False
    ar = rc[:].apply(square, 3)
    assert isinstance(ar, ipp.AsyncResult) and ar.get(30) == [9] * NUM_ENGINES
    ar = dv.execute("nb_x = 6 * 7")
    assert isinstance(ar, ipp.AsyncResult)
    ar.wait(30)
    assert ar.successful()
    amr = dv.map(square, range(10))
    assert isinstance(amr, ipp.AsyncResult) and amr.get(30) == [x * x for x in range(10)]
    assert list(dv.map(square, range(6))) == [0, 1, 4, 9, 16, 25]  # iterable as chunks arrive
    ar = dv.push({"nb_y": 5})
    assert isinstance(ar, ipp.AsyncResult) and ar.get(30) == [None] * NUM_ENGINES
    assert dv.pull("nb_y").get(30) == [5] * NUM_ENGINES
    assert rc[0].apply(square, 4).get(30) == 16  # one engine: its value, not a list
    assert dv.update({"nb_u": 1}).get(30) == [None] * NUM_ENGINES  # update is push
    ar = dv.scatter("nb_s", list(range(8)))
    assert isinstance(ar, ipp.AsyncResult)
    assert dv.gather("nb_s").get(30) == list(range(8))
    # dict-like access blocks whatever view.block says
    dv["nb_a"] = 3
    assert dv["nb_a"] == [3] * NUM_ENGINES and dv.get("nb_a") == [3] * NUM_ENGINES
    assert rc[1]["nb_x"] == 42
    # an error arrives with get()
    ar = dv.execute("1 / 0")
    with pytest.raises(ipp.CompositeError):
        ar.get(30)
    # rc.block is the block new views start with; dv.block = True switches back
    dv.block = True
    assert dv.apply(square, 2) == [4] * NUM_ENGINES
    assert dv.map(square, [1, 2]) == [1, 4]
    assert dv.execute("nb_z = 1").successful()
    assert dv.pull("nb_x") == [42] * NUM_ENGINES
    assert isinstance(dv.apply_async(square, 3), ipp.AsyncResult)
    rc.block = True
    try:
        assert rc[:].apply(square, 5) == [25] * NUM_ENGINES
        assert rc.load_balanced_view().apply(square, 5) == 25
    finally:
        rc.block = False
    assert isinstance(rc[:].apply(square, 5), ipp.AsyncResult)
    ar = dv.clear(targets=[0], block=False)
    assert isinstance(ar, ipp.AsyncResult) and isinstance(rc.clear(targets=[1]), ipp.AsyncResult)
    ar.get(30)


def test_activate_makes_its_view_blocking(rc):
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    InteractiveShell.instance()
    try:
        view = rc.activate(targets=[0, 1], suffix="_blk")
        assert view.block is True and view.apply(square, 2) == [4, 4]  # as ipyparallel's rc.activate()
        dv = rc[2:]
        dv.activate("_blk2")
        assert dv.block is True
    finally:
        InteractiveShell.clear_instance()


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
    sq = ipp.remote(dv)(square)  # block=None: the view's block at each call
    ar = sq(3)
    assert ar.get(30) == 9
    dv.block = True
    assert sq(4) == 16
    dv.block = False
    assert sq.map([1, 2]).get(30) == [1, 4]


def test_view_remote_takes_the_view_block_when_decorating(rc):
    # as ipyparallel: @view.remote() / @view.parallel() fix view.block as it is then
    dv = rc[0]
    sq = dv.remote()(square)
    dv.block = True
    ar = sq(3)
    assert isinstance(ar, ipp.AsyncResult) and ar.get(30) == 9
    sq2, bsum = dv.remote()(square), dv.parallel()(block_sum)
    dv.block = False
    assert sq2(4) == 16 and bsum([1, 2, 3]) == [6]


def test_flags_on_a_direct_view_are_refused_with_the_reason(rc):
    with pytest.raises(KeyError, match="no flag 'retries' on a DirectView: its flags are block, targets and track"):
        ipp.remote(rc[:], retries=2)(square)
    with pytest.raises(KeyError, match="no flag 'after'"):
        rc[:].set_flags(after=[])


def test_direct_view_set_flags_and_temp_flags(rc):
    dv = rc[:]
    with dv.temp_flags(block=True, targets=[0, 1]):
        assert dv.apply(square, 3) == [9, 9]
    assert dv.block is False and dv.targets == rc.ids  # restored
    dv.set_flags(targets=1)
    try:
        assert dv.apply_sync(square, 2) == 4
    finally:
        dv.set_flags(targets="all")
    assert dv.apply_sync(square, 2) == [4] * NUM_ENGINES


def block_sum(xs):
    return [sum(xs)]


def test_parallel_decorator_runs_f_on_each_engines_block(rc):
    dv = rc[:]

    @dv.parallel(block=True)
    def doubled(xs):
        return [2 * x for x in xs]

    assert doubled(range(10)) == [2 * x for x in range(10)]
    assert isinstance(doubled, ipp.ParallelFunction)
    # one block per engine: each call of f sees a contiguous block, in engine order
    n = 3 * NUM_ENGINES
    assert dv.parallel(block=True)(block_sum)(range(n)) == [sum(range(3 * k, 3 * k + 3)) for k in range(NUM_ENGINES)]
    # fewer items than engines: only as many blocks as items; none: nothing runs
    assert doubled([5, 6]) == [10, 12]
    assert doubled([]) == []
    # several sequences: f gets a block of each; numpy blocks join into one array
    import numpy as np

    added = ipp.parallel(dv, block=True)(lambda a, b: a + b)(np.arange(9), np.ones(9))
    assert isinstance(added, np.ndarray) and added.tolist() == [float(x + 1) for x in range(9)]
    # element by element: pf.map is view.map
    assert dv.parallel(block=True)(square).map([1, 2, 3]) == [1, 4, 9]
    ar = ipp.parallel(dv, block=False)(doubled.__wrapped__)(range(6))
    assert ar.get(30) == [0, 2, 4, 6, 8, 10]
    with pytest.raises(ValueError, match="only dist='b'"):
        dv.parallel(dist="r")


def test_parallel_on_a_load_balanced_view(rc):
    lv = rc.load_balanced_view()
    pf = lv.parallel(block=True)(lambda xs: [x * x for x in xs])
    assert pf(range(20)) == [x * x for x in range(20)]
    ar = lv.parallel()(lambda xs: sum(xs))(range(8))  # not blocking: the per-block results
    assert sum(ar.get(30)) == sum(range(8))


def test_reference_is_the_engines_own_value(rc):
    dv = rc[:]
    dv.scatter("ref_part", list(range(8)), block=True)
    parts = dv.apply_sync(lambda p: p, ipp.Reference("ref_part"))
    assert sum(parts, []) == list(range(8))  # each engine got its own block, nothing sent
    dv.execute("import types; ref_ns = types.SimpleNamespace(v=3)", block=True)
    assert dv.apply_sync(lambda v: v + 1, ipp.Reference("ref_ns.v")) == [4] * NUM_ENGINES
    with pytest.raises(ipp.RemoteError, match="Reference\\('no_such_name'\\): name 'no_such_name' is not defined"):
        rc[0].apply_sync(lambda v: v, ipp.Reference("no_such_name"))
    with pytest.raises(ValueError, match="names a variable"):
        ipp.Reference("not a name")


def test_require_imports_on_the_engine_without_touching_its_namespace(rc):
    def helper(x):
        return x + 100

    @ipp.require("json", "os.path", helper)
    def uses_them(x):
        return json.dumps([x]), os.path.basename("/a/b"), helper(x)  # noqa: F821

    assert rc[0].apply_sync(uses_them, 1) == ("[1]", "b", 101)
    assert rc.load_balanced_view().apply_sync(uses_them, 2) == ("[2]", "b", 102)
    assert rc[0].apply_sync(lambda: "json" in globals() or "helper" in globals()) is False
    with pytest.raises(TypeError, match="require takes module names"):
        ipp.require(42)


def test_run_a_file_and_sync_imports(rc, tmp_path, capsys):
    script = tmp_path / "setup_engines.py"
    script.write_text("ran_from_file = 6 * 7\n")
    dv = rc[:]
    dv.run(str(script), block=True)
    assert dv.pull("ran_from_file", block=True) == [42] * NUM_ENGINES
    with dv.sync_imports():
        import json  # noqa: F401
        from os import path as _p  # noqa: F401
    assert "importing json" in capsys.readouterr().out
    assert dv.apply_sync(lambda: (json.dumps(1), path.sep)) == [("1", "/")] * NUM_ENGINES  # noqa: F821
    with dv.sync_imports(local=False, quiet=True):
        import colorsys
    assert "imported on the engines only" in repr(colorsys)  # not imported here
    assert dv.apply_sync(lambda: "colorsys" in __import__("__main__").__dict__) == [True] * NUM_ENGINES
    assert dv.apply_sync(lambda: colorsys.__name__) == ["colorsys"] * NUM_ENGINES  # the engine's module


def test_async_result_msg_ids(rc):
    ar = rc[:].apply_async(square, 2)
    assert ar.msg_ids == [ar.msg_id] and ar.get(30) == [4] * NUM_ENGINES


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


def test_clear_empties_the_engines_namespaces(rc):
    dv = rc[:]
    dv.push(dict(clear_a=1, clear_b=[2]), block=True)
    dv.execute("import math; clear_c = math.pi", block=True)
    rc.clear(targets=[0, 1])
    left = dv.apply_sync(lambda: sorted(n for n in __import__("__main__").__dict__ if n.startswith("clear_")))
    assert left[:2] == [[], []] and left[2:] == [["clear_a", "clear_b", "clear_c"]] * (NUM_ENGINES - 2)
    with pytest.raises(ipp.RemoteError, match="NameError"):
        rc[0].pull("clear_a", block=True)
    dv.clear(block=True)
    assert dv.apply_sync(lambda: [n for n in __import__("__main__").__dict__ if not n.startswith("__")]) == [[]] * NUM_ENGINES
    dv.push(dict(after_clear=3), block=True)  # the engines serve on
    assert dv.pull("after_clear", block=True) == [3] * NUM_ENGINES


def on_engine(i):
    import pcluster.engine

    return pcluster.engine.engine_id == i


def test_depend_runs_a_task_only_where_its_condition_holds(rc):
    lv = rc.load_balanced_view()

    @ipp.depend(on_engine, 2)
    def where(x):
        import pcluster.engine

        return x, pcluster.engine.engine_id

    ars = [lv.apply_async(where, i) for i in range(12)]
    assert [ar.get(30) for ar in ars] == [(i, 2) for i in range(12)]
    assert all(ar.engine_id == 2 for ar in ars)
    # False everywhere: tried on each engine, then ImpossibleDependency naming them.
    never = ipp.depend(lambda: False)(lambda: 1)
    with pytest.raises(ipp.ImpossibleDependency, match="not met on any engine it may run on"):
        lv.apply_sync(never)
    # A dependent of that task fails with it; the view serves on.
    first = lv.apply_async(never)
    later = lv.apply_async(lambda: 2, after=[first])
    with pytest.raises(ipp.DependencyFailed):
        later.get(30)
    assert lv.apply_sync(lambda: 3) == 3


def test_depend_on_a_direct_view_raises_unmet_dependency_where_false(rc):
    f = ipp.depend(on_engine, 1)(lambda: "ran")
    assert rc[1].apply_sync(f) == "ran"
    with pytest.raises(ipp.UnmetDependency, match="false on this engine"):
        rc[0].apply_sync(f)
    assert issubclass(ipp.UnmetDependency, ipp.DependencyError)
    with pytest.raises(TypeError, match="depend takes a function"):
        ipp.depend(3)


def test_importer_is_sync_imports_here_and_there(rc):
    dv = rc[:]
    with dv.importer:
        import colorsys  # noqa: F401 - imported here and on every engine
    assert dv.apply_sync(lambda: "colorsys" in globals()) == [True] * len(rc.ids)


def test_asyncresult_extras_of_ipyparallel(rc):
    """get(return_exceptions=True), sent/wait_for_send, metadata as attributes, timedelta,
    result_dict, wall_time/serial_time raising TimeoutError until done."""
    import time as _time

    dv = rc[:]
    ar = dv.apply_async(__import__("os").getpid)
    assert ar.sent is True and ar.wait_for_send() is None
    ar.get(30)
    assert ar.result_dict == dict(zip(rc.ids, ar.get()))
    assert len(ar.started) == len(rc.ids) and all(s <= c for s, c in zip(ar.started, ar.completed))
    assert ar.timedelta(ar.submitted, ar.received) == ar.wall_time >= ar.timedelta(ar.started, ar.completed) >= 0
    assert ar.status == ["ok"] * len(rc.ids)

    first = rc.ids[0]
    one_bad = rc[rc.ids[:2]].execute(f"import pcluster.engine\nif pcluster.engine.engine_id == {first}: 1/0", block=False)
    got = one_bad.get(30, return_exceptions=True)
    assert len(got) == 2 and isinstance(got[0], ipp.RemoteError) and got[1] is None
    single = rc[rc.ids[0]].apply_async(lambda: 1 / 0)
    assert isinstance(single.get(30, return_exceptions=True), ipp.RemoteError)
    slow = rc[rc.ids[0]].apply_async(_time.sleep, 1)
    with pytest.raises(TimeoutError, match="wall_time: apply has not finished"):
        slow.wall_time
    with pytest.raises(TimeoutError, match="serial_time"):
        slow.serial_time
    slow.get(30)
    assert slow.wall_time >= 1 and slow.serial_time >= 0.99


def test_client_verbs_on_views(rc):
    """ipyparallel has abort, queue_status, get_result, purge_results, shutdown and spin on views too."""
    dv, lv = rc[rc.ids[:2]], rc.load_balanced_view()
    assert set(dv.queue_status()) == set(rc.ids[:2]) | {"unassigned", "waiting"}
    ar = dv.apply_async(lambda: 3)
    ar.get(30)
    assert dv.get_result(ar.msg_id, block=True) == [3, 3]
    assert lv.get_result(ar.msg_id).get(30) == [3, 3]
    dv.purge_results(jobs=[ar.msg_id])
    assert rc.result_status([ar.msg_id])["dropped"] == [ar.msg_id]
    assert lv.abort() == 0 and dv.spin() is None
    with pytest.raises(ValueError, match="cannot be restarted"):
        dv.shutdown(restart=True)


def test_direct_view_history_and_track(rc):
    """view.history (msg_ids sent through the view) and track= accepted as a flag (a request's
    bytes are copied or written before the call returns: nothing to track)."""
    dv = rc[:]
    a = dv.apply_async(lambda: 1)
    b = dv.push({"h": 1}, block=True)
    c = dv.execute("h += 1", block=False)
    a.get(30), c.get(30)
    assert len(dv.history) == 3 and dv.history[0] == a.msg_id and dv.history[2] == c.msg_id
    assert b == [None] * len(rc.ids) and set(dv.history) <= set(rc.history)
    with dv.temp_flags(track=True):
        assert dv.track is True
        ar = dv.apply_async(lambda: 2)
        assert ar.sent and ar.get(30) == [2] * len(rc.ids)
    assert dv.track is False


def test_queue_status_of_one_engine_is_its_dict(rc):
    one = rc.queue_status(targets=rc.ids[0])
    assert set(one) >= {"queue", "completed"} and isinstance(one["completed"], int)
    assert rc.queue_status()[rc.ids[0]].keys() == one.keys()


def test_composite_error_tb_limit(rc):
    """CompositeError.tb_limit (4, as ipyparallel): str() and the traceback show that many, then count the rest."""
    try:
        rc[:].execute("raise ValueError('each engine')", block=True)
    except ipp.CompositeError as e:
        assert e.tb_limit == 4 and len(e.elist) == NUM_ENGINES
        e.tb_limit = 1
        assert str(e).count("ValueError") == 1 and f"{NUM_ENGINES - 1} more exceptions" in str(e)
        assert "\n".join(e.render_traceback()).count("each engine") >= 1
        assert f"{NUM_ENGINES - 1} more exceptions" in "\n".join(e.render_traceback())
    else:
        pytest.fail("no CompositeError")


def test_direct_view_abort_drops_requests_not_started(rc):
    """view.abort(): requests of this view that have not started fail with TaskAborted, those
    waiting in the controller (beyond the client's window of 16 per engine) and those already
    queued on the engine alike; the running one finishes; the engine serves on."""
    import time as _time

    e = rc.ids[-1]
    dv = rc[e]
    running = dv.apply_async(_time.sleep, 1.5)
    queued = [dv.apply_async(lambda k: k, k) for k in range(24)]
    _time.sleep(0.3)
    assert dv.abort() is None
    assert running.get(30) is None
    for ar in queued:
        with pytest.raises(ipp.TaskAborted, match="aborted"):
            ar.get(30)
    assert dv.apply_sync(lambda: "still serving") == "still serving"
    one = dv.apply_async(_time.sleep, 1)
    later = dv.apply_async(lambda: 5)
    _time.sleep(0.2)
    assert later.abort() == 0  # on the engine, not started: skipped there
    with pytest.raises(ipp.TaskAborted):
        later.get(30)
    one.get(30)
    dv.abort(jobs=[one])  # finished: nothing to do
