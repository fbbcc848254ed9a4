"""Results by id (issue 12, requirement 3): ipyparallel's hub database, kept by the controller.
rc.history, rc.results, rc.metadata, rc.get_result (any client's, an earlier connection's),
rc.result_status, rc.resubmit, rc.purge_results / purge_local_results, rc.db_query,
rc.hub_history; the store's bounds and what a dropped result says. Real jobs, real clients, a
client process that dies for real (os._exit) and a new Client that collects its results."""

import datetime
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import pcluster as ipp
from pcluster.error import ResultUnavailable

from conftest import NUM_ENGINES

T = 30


def double(x):
    return 2 * x


def fail():
    raise ValueError("nope")


def test_results_by_id_from_another_client(job, rc):
    dv, lv = rc[:], rc.load_balanced_view()
    ar = dv.apply_async(double, 21)
    task = lv.apply(double, 5)
    bad = lv.apply(fail)
    ex = dv.execute("print('hello from', 6 * 7)", block=False)
    ar.get(T), task.get(T), bad.exception(T), ex.wait(T)
    with ipp.Client(str(job.path), timeout=10) as other:
        assert other.get_result(ar.msg_id, block=True) == [42] * NUM_ENGINES
        got = other.get_result([task.msg_id, str(task.msg_id)])  # ipyparallel's ids are strings
        assert isinstance(got, ipp.hub.AsyncHubResult)
        assert got.get(T) == [10, 10]
        with pytest.raises(ipp.RemoteError, match="ValueError: nope"):
            other.get_result(bad.msg_id).get(T)
        md = other.metadata[ex.msg_id]
        assert md["method"] == "execute" and md["status"] == "ok"
        assert md["stdout"] == "hello from 42\n" * NUM_ENGINES
        assert md["engine_id"] == rc.ids and md["client"] == ipp._core.client_of(ex.msg_id)
        assert md["submitted"] <= md["started"] <= md["completed"]
        tmd = other.get_result(task.msg_id).metadata
        assert tmd["engine_id"] == task.engine_id


def test_history_results_and_metadata_of_this_client(rc):
    lv = rc.load_balanced_view()
    n0 = len(rc.history)
    ars = [lv.apply(double, i) for i in range(5)]
    for a in ars:
        a.get(T)
    assert rc.history[n0:] == [a.msg_id for a in ars]
    assert rc.get_result(-1, block=True) == 8  # history index: the newest
    assert rc.get_result(n0, block=True) == 0
    for i, a in enumerate(ars):
        assert a.msg_id in rc.results
        assert rc.results[a.msg_id] == 2 * i
        assert rc.metadata[a.msg_id]["engine_id"] == a.engine_id
    bad = lv.apply(fail)
    bad.exception(T)
    assert isinstance(rc.results[bad.msg_id], ipp.RemoteError)  # as ipyparallel: the error is the result
    del ars  # the job's copy serves once this client holds none
    assert rc.results[rc.history[n0 + 3]] == 6
    slow = lv.apply(time.sleep, 1)
    assert slow.msg_id not in rc.results
    with pytest.raises(KeyError, match="has not finished"):
        rc.results[slow.msg_id]
    slow.get(T)
    gone = rc.history[n0:n0 + 2]
    rc.purge_local_results(gone)
    assert not set(gone) & set(rc.history) and not set(gone) & set(rc.results)
    assert rc.results[gone[1]] == 2  # by id it still answers: from the job's kept results


def test_a_new_client_collects_what_a_dead_process_left(job, rc):
    """The issue's reconnect row: a process sends work and dies (os._exit); a new Client on the
    same connection file gets each result by id, those still running once they finish."""
    script = textwrap.dedent(f"""
        import json, os, sys, time
        import pcluster
        rc = pcluster.Client({str(job.path)!r}, timeout=10)
        def work(x):
            import time
            time.sleep(1.5)
            return x + 1
        direct = rc[:].apply_async(work, 10)
        task = rc.load_balanced_view().apply(work, 20)
        quick = rc[0].apply_async(work, 30)
        rc.queue_status()  # a round trip: the requests before it have left this process
        print(json.dumps([direct.msg_id, task.msg_id, quick.msg_id]), flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    direct, task, quick = json.loads(out.stdout.strip().splitlines()[-1])
    with ipp.Client(str(job.path), timeout=10) as again:
        status = again.result_status([direct, task, quick])
        assert sorted(status["pending"] + status["completed"]) == sorted([direct, task, quick])
        ar = again.get_result([direct, task, quick])
        assert ar.get(T) == [[11] * NUM_ENGINES, 21, 31]
        assert again.result_status([direct, task, quick])["completed"] == [direct, task, quick]
        assert again.db_query({"client": ipp._core.client_of(direct)}, keys=["result"]) == [
            {"msg_id": direct, "result": [11] * NUM_ENGINES}, {"msg_id": task, "result": 21}, {"msg_id": quick, "result": 31}]


def test_resubmit_runs_a_kept_task_again(job, rc, tmp_path):
    lv = rc.load_balanced_view()
    mark = tmp_path / "runs"

    def note(path):
        with open(path, "a") as f:
            f.write("x")
        return os.path.getsize(path)

    first = lv.apply(note, str(mark))
    assert first.get(T) == 1
    with ipp.Client(str(job.path), timeout=10) as other:
        again = other.resubmit(first.msg_id)
        assert again.get(T) == 2
        assert again.msg_id != first.msg_id and again.msg_id in other.history
        assert other.get_result(first.msg_id).metadata["resubmitted"] == again.msg_id
    assert rc.resubmit([first], block=True) == [3]
    direct = rc[0].apply_async(double, 1)
    direct.get(T)
    with pytest.raises(ipp.TaskError, match="only load-balanced tasks can be resubmitted"):
        rc.resubmit(direct.msg_id).get(T)
    with pytest.raises(ipp.TaskError, match="never had it"):
        rc.resubmit(str((4000 << 32) + 1)).get(T)


def test_result_status_purge_and_db_query(rc):
    lv = rc.load_balanced_view()
    t0 = datetime.datetime.now()
    done = [lv.apply(double, i) for i in range(4)]
    for a in done:
        a.get(T)
    slow = lv.apply(time.sleep, 2)
    ids = [a.msg_id for a in done]
    st = rc.result_status(ids + [slow.msg_id])
    assert st["completed"] == ids and st["pending"] == [slow.msg_id] and st["dropped"] == []
    with pytest.raises(ResultUnavailable, match="no request with id"):
        rc.result_status([(3999 << 32) + 7])
    # db_query: MongoDB-style operators over the kept records, datetimes or epoch seconds
    rows = rc.db_query({"msg_id": {"$in": ids}, "completed": {"$gte": t0}}, keys=["engine_id", "result"])
    assert [r["msg_id"] for r in rows] == ids and [r["result"] for r in rows] == [0, 2, 4, 6]
    assert rc.db_query({"msg_id": slow.msg_id, "completed": None}, keys=["state"]) == [
        {"msg_id": slow.msg_id, "state": "pending"}]
    assert slow.msg_id in rc.hub_history() and set(ids) <= set(rc.hub_history())
    with pytest.raises(ValueError, match="unknown operator"):
        rc.db_query({"msg_id": {"$regex": "x"}})
    # purge: finished ones go (and say so when asked), a pending one cannot
    with pytest.raises(ValueError, match="still pending"):
        rc.purge_results(jobs=[ids[0], slow.msg_id])
    assert rc.result_status(ids[:1])["dropped"] == ids[:1]
    engine = done[1].engine_id
    rc.purge_results(targets=[engine])
    assert all(rc.result_status([a.msg_id])["dropped"] for a in done if a.engine_id == engine)
    slow.get(T)
    rc.purge_results("all")
    assert rc.result_status([slow.msg_id])["dropped"] == [slow.msg_id]
    with pytest.raises(ValueError, match="name jobs"):
        rc.purge_results()


def test_the_store_is_bounded_and_says_what_it_dropped(start_job):
    j = start_job(2, env={"PCLUSTER_RESULTS_KEEP": "5", "PCLUSTER_RESULTS_ITEM_KIB": "64"})
    with ipp.Client(str(j.path), timeout=10) as c:
        ids = [c[0].apply_async(double, i).msg_id for i in range(8)]
        c.wait(timeout=T)
        big = c[0].apply_async(lambda: b"x" * 200_000)
        assert len(big.get(T)) == 200_000
        with ipp.Client(str(j.path), timeout=10) as other:
            st = other.result_status(ids)
            assert st["dropped"] == ids[:4] and st["completed"] == ids[4:]
            with pytest.raises(ResultUnavailable, match="PCLUSTER_RESULTS_KEEP"):
                other.get_result(ids[0]).get(T)
            assert other.get_result(ids[-1], block=True) == 14
            with pytest.raises(ResultUnavailable, match=r"0\.2 MiB was over PCLUSTER_RESULTS_ITEM_KIB"):
                other.get_result(big.msg_id).get(T)
            assert other.db_query({"msg_id": big.msg_id}, keys=["state"]) == [{"msg_id": big.msg_id, "state": "done"}]
        c.shutdown()


def test_a_job_that_keeps_no_results_says_so(start_job):
    j = start_job(2, env={"PCLUSTER_RESULTS_KEEP": "0"})
    with ipp.Client(str(j.path), timeout=10) as c:
        ar = c[0].apply_async(double, 1)
        assert ar.get(T) == 2
        with ipp.Client(str(j.path), timeout=10) as other:
            with pytest.raises(ResultUnavailable, match="PCLUSTER_RESULTS_KEEP=0"):
                other.get_result(ar.msg_id).get(T)
        c.shutdown()
