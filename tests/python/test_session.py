"""The interactive session from the issue, against one shared job with 4 engines."""

import concurrent.futures
import sys

import cloudpickle
import numpy as np
import pytest

import pcluster

# Functions defined here must travel by value: the engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDS = [0, 1, 2, 3]


def whoami():
    from pcluster.engine import engine_id

    return engine_id


# --------------------------------------------------------------------------- basics
def test_ids_and_views(rc):
    assert rc.ids == IDS
    assert len(rc) == 4
    assert rc[:].targets == IDS
    assert rc.direct_view().targets == IDS
    assert rc[1:3].targets == [1, 2]
    assert rc[[0, 2]].targets == [0, 2]


def test_push_pull(rc):
    dv = rc[:]
    assert dv.push(dict(s_a=10, s_b="text"), block=True) == [None] * 4
    assert dv.pull("s_a", block=True) == [10] * 4
    assert dv.pull(["s_a", "s_b"], block=True) == [[10, "text"]] * 4
    assert rc[0].pull("s_a", block=True) == 10  # one engine: a scalar, not a list
    assert rc[2].pull(["s_a", "s_b"], block=True) == [10, "text"]


def test_setitem_getitem_update_get(rc):
    dv = rc[:]
    dv["s_item"] = [1, 2, 3]
    assert dv["s_item"] == [[1, 2, 3]] * 4
    assert rc[3]["s_item"] == [1, 2, 3]
    dv.update(dict(s_upd=3.5))
    assert dv.get("s_upd") == [3.5] * 4
    rc[1]["s_item"] = "only one"
    assert dv["s_item"] == [[1, 2, 3], "only one", [1, 2, 3], [1, 2, 3]]


def test_execute_with_numpy(rc):
    dv = rc[:]
    ar = dv.execute("import numpy as np\ns_z = int(np.arange(10).sum())", block=True)
    assert isinstance(ar, pcluster.AsyncResult)
    assert ar.ready() and ar.successful()
    assert dv["s_z"] == [45] * 4
    dv.execute("s_arr = np.ones((3, 3)) * 2", block=True)
    for a in dv.pull("s_arr", block=True):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, np.full((3, 3), 2.0))


def test_apply_lambda_uses_engine_name(rc):
    dv = rc[:]
    dv.push(dict(s_engine_only=10), block=True)
    assert dv.apply_sync(lambda x: x + s_engine_only, 1) == [11] * 4  # noqa: F821 - lives on the engines
    assert rc[0].apply_sync(lambda x: x + s_engine_only, 1) == 11  # noqa: F821
    assert dv.apply_sync(lambda: s_engine_only * 2) == [20] * 4  # noqa: F821


def test_apply_sees_engine_ids(rc):
    assert rc[:].apply_sync(whoami) == IDS
    assert rc[2].apply_sync(whoami) == 2

    def info():
        from pcluster.engine import comm, engine_id, num_engines

        return engine_id, num_engines, comm.Get_rank(), comm.Get_size()

    assert rc[:].apply_sync(info) == [(i, 4, i, 4) for i in IDS]


def test_engines_communicator_collective(rc):
    rc[:].execute("from pcluster.engine import comm, engine_id\ns_sum = comm.allreduce(engine_id)", block=True)
    assert rc[:]["s_sum"] == [6] * 4


def test_map(rc):
    dv = rc[:]
    assert dv.map_sync(lambda x: x * x, range(32)) == [x * x for x in range(32)]
    assert dv.map_sync(lambda x: x + 1, [5, 6, 7]) == [6, 7, 8]
    # The work is split in contiguous blocks, first engines taking the remainder.
    assert dv.map_sync(lambda x: whoami(), range(10)) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert rc[1:3].map_sync(lambda x: (x, whoami()), range(4)) == [(0, 1), (1, 1), (2, 2), (3, 2)]


def test_map_two_sequences(rc):
    assert rc[:].map_sync(lambda x, y: x * 10 + y, range(9), range(100, 109)) == [x * 10 + y for x, y in zip(range(9), range(100, 109))]
    assert rc[:].map_sync(pow, [2, 3, 4], [5, 2, 1]) == [32, 9, 4]


def test_map_async(rc):
    ar = rc[:].map_async(lambda x: -x, range(20))
    assert isinstance(ar, pcluster.AsyncResult)
    assert ar.get(30) == [-x for x in range(20)]
    ar2 = rc[:].map(lambda x: x, "abcdef", block=False)
    assert ar2.get(30) == list("abcdef")


# --------------------------------------------------------------------------- scatter / gather
def test_scatter_gather_numpy_roundtrip(rc):
    dv = rc[:]
    a = np.arange(1000, dtype=np.float64) * 0.5
    assert dv.scatter("s_x", a, block=True) is None
    sizes = dv.apply_sync(lambda: (len(s_x), float(s_x[0])))  # noqa: F821
    assert [n for n, _ in sizes] == [250] * 4
    assert [f for _, f in sizes] == [0.0, 125.0, 250.0, 375.0]
    b = dv.gather("s_x", block=True)
    assert isinstance(b, np.ndarray) and b.dtype == a.dtype
    np.testing.assert_array_equal(a, b)


def test_scatter_gather_uneven_and_2d(rc):
    dv = rc[:]
    a = np.arange(7 * 3).reshape(7, 3)
    dv.scatter("s_y", a, block=True)
    assert dv.apply_sync(lambda: s_y.shape) == [(2, 3), (2, 3), (2, 3), (1, 3)]  # noqa: F821
    np.testing.assert_array_equal(dv.gather("s_y", block=True), a)


def test_scatter_gather_list(rc):
    dv = rc[:]
    seq = list(range(10))
    dv.scatter("s_l", seq, block=True)
    assert dv["s_l"] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert dv.gather("s_l", block=True) == seq
    dv.scatter("s_one", [10, 20, 30, 40], flatten=True, block=True)
    assert dv["s_one"] == [10, 20, 30, 40]


def test_scatter_gather_subset(rc):
    v = rc[[0, 2]]
    v.scatter("s_sub", list(range(5)), block=True)
    assert v["s_sub"] == [[0, 1, 2], [3, 4]]
    assert v.gather("s_sub", block=True) == [0, 1, 2, 3, 4]
    assert rc[:].gather("s_sub", targets=[2, 0], block=True) == [3, 4, 0, 1, 2]


def test_scatter_gather_80mb(rc):
    dv = rc[:]
    a = np.arange(10_000_000, dtype=np.float64)  # 80 MB
    dv.scatter("s_big80", a, block=True)
    b = dv.gather("s_big80", block=True)
    assert b.shape == a.shape
    assert np.array_equal(a, b)
    dv.execute("del s_big80", block=True)


def test_large_push_100mb(rc):
    dv = rc[:]
    rng = np.random.default_rng(7)
    a = rng.random(12_500_000)  # 100 MB
    dv.push(dict(s_big=a), block=True)
    sums = dv.apply_sync(lambda: (s_big.shape, float(s_big.sum()), float(s_big[-1])))  # noqa: F821
    assert sums == [((12_500_000,), float(a.sum()), float(a[-1]))] * 4
    dv.execute("del s_big", block=True)


def test_large_result_pull(rc):
    rc[:].execute("import numpy as np\ns_res = np.full(5_000_000, engine_id, dtype=np.int32)", block=True)
    got = rc[:].pull("s_res", block=True)
    for i, arr in zip(IDS, got):
        assert arr.shape == (5_000_000,) and arr.dtype == np.int32
        assert arr.min() == i and arr.max() == i
    rc[:].execute("del s_res", block=True)


# --------------------------------------------------------------------------- non-blocking
def test_nonblocking_asyncresult(rc):
    dv = rc[:]
    ar = dv.apply_async(lambda x: x * 3, 7)
    assert isinstance(ar, pcluster.AsyncResult)
    assert isinstance(ar, concurrent.futures.Future)
    assert ar.wait(30)
    assert ar.ready()
    assert ar.get() == [21] * 4
    assert ar.r == ar.get()
    assert ar.result() == [21] * 4
    assert ar.successful()
    assert ar.get_dict() == {i: 21 for i in IDS}
    md = ar.metadata
    assert [m["engine_id"] for m in md] == IDS
    for m in md:
        assert m["status"] == "ok"
        assert m["started"] <= m["completed"]


def test_block_false_everywhere(rc):
    dv = rc[:]
    ar_push = dv.push(dict(s_nb=1), block=False)
    assert isinstance(ar_push, pcluster.AsyncResult)
    ar_pull = dv.pull("s_nb", block=False)
    ar_exec = dv.execute("s_nb += 1", block=False)
    ar_pull2 = dv.pull("s_nb", block=False)
    ar_scatter = dv.scatter("s_nbs", list(range(8)), block=False)
    ar_gather = dv.gather("s_nbs", block=False)
    assert rc.wait([ar_push, ar_pull, ar_exec, ar_pull2, ar_scatter, ar_gather], timeout=60)
    assert ar_pull.get() == [1] * 4
    assert ar_pull2.get() == [2] * 4
    assert ar_scatter.get() is None
    assert ar_gather.get() == list(range(8))


def test_view_block_attribute(rc):
    dv = rc[:]
    assert dv.block is False  # as ipyparallel: views start with the client's block, False
    ar = dv.apply(lambda: 5)
    assert isinstance(ar, pcluster.AsyncResult)
    assert ar.get(30) == ar.r == [5] * 4
    dv.block = True
    assert dv.apply(lambda: 6) == [6] * 4
    dv.block = False
    assert isinstance(dv.apply(lambda: 6), pcluster.AsyncResult)
    single = rc[1]
    ar1 = single.apply(lambda: 7)
    assert ar1.get(30) == 7
    assert ar1.get_dict() == {1: 7}


def test_get_with_timeout_then_later(rc):
    ar = rc[:].apply_async(lambda: __import__("time").sleep(1.0) or "slept")
    with pytest.raises(TimeoutError):
        ar.get(timeout=0.01)
    assert ar.get(timeout=60) == ["slept"] * 4


# --------------------------------------------------------------------------- ordering
def test_interleaved_overlapping_subsets_fifo(rc):
    """Non-blocking requests to overlapping engine sets are run by each engine in the order the
    client sent them: the last push wins, and an append log per engine is exactly the order of
    the requests addressed to it."""
    rc[:].execute("s_log = []", block=True)
    subsets = [[0, 1], [1, 2, 3], IDS, [3], [0, 2], [2], [3, 1], [0]]
    expected_log = {i: [] for i in IDS}
    expected_last = {}
    ars = []
    for k in range(240):
        t = subsets[k % len(subsets)]
        v = rc[t]
        if k % 2:
            ars.append(v.push(dict(s_counter=k), block=False))
            for i in t:
                expected_last[i] = k
        else:
            ars.append(v.execute(f"s_log.append({k})", block=False))
            for i in t:
                expected_log[i].append(k)
    assert rc.wait(ars, timeout=90)
    for ar in ars:
        ar.get()
    assert rc[:].pull("s_counter", block=True) == [expected_last[i] for i in IDS]
    assert rc[:].pull("s_log", block=True) == [expected_log[i] for i in IDS]


def test_subset_views_results_in_target_order(rc):
    assert rc[1:3].apply_sync(whoami) == [1, 2]
    assert rc[[0, 2]].apply_sync(whoami) == [0, 2]
    assert rc[[3, 0, 2]].apply_sync(whoami) == [3, 0, 2]
    assert rc[::2].apply_sync(whoami) == [0, 2]
    assert rc.direct_view([1, 3]).apply_sync(whoami) == [1, 3]
    assert rc[:].push(dict(s_t=1), targets=[1, 2], block=True) == [None, None]
    rc[[0, 3]].push(dict(s_t=0), block=True)
    assert rc[:]["s_t"] == [0, 1, 1, 0]


# --------------------------------------------------------------------------- namespaces and code
def test_namespace_persists(rc, job):
    rc[:].execute("s_persist = 1", block=True)
    rc[:].execute("s_persist += 1", block=True)
    assert rc[:]["s_persist"] == [2] * 4
    # ... across clients too: the namespace belongs to the engine, not to the connection.
    with pcluster.Client(str(job.path)) as other:
        other[:].execute("s_persist += 10", block=True)
    assert rc[:]["s_persist"] == [12] * 4


def test_interactive_function_defined_on_engine(rc):
    rc[:].execute("def s_twice(x):\n    return 2 * x\n", block=True)
    assert rc[:].apply_sync(lambda y: s_twice(y) + 1, 4) == [9] * 4  # noqa: F821
    assert rc[:].map_sync(lambda y: s_twice(y), range(6)) == [0, 2, 4, 6, 8, 10]  # noqa: F821


def test_closures_and_local_functions(rc):
    def make_adder(n):
        def add(x):
            return x + n

        return add

    add5 = make_adder(5)
    assert rc[:].apply_sync(add5, 1) == [6] * 4
    assert rc[:].map_sync(add5, [1, 2, 3]) == [6, 7, 8]

    def uses_helper(x):
        return helper_square(x) + 1

    assert rc[0].apply_sync(uses_helper, 3) == 10
    # A pushed function can be called from later code.
    rc[:].push(dict(s_adder=make_adder(100)), block=True)
    assert rc[:].apply_sync(lambda: s_adder(1)) == [101] * 4  # noqa: F821


def helper_square(x):
    return x * x


def test_interactive_class(rc):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm2(self):
            return self.x**2 + self.y**2

    rc[:].push(dict(s_p=Point(3, 4)), block=True)
    assert rc[:].apply_sync(lambda: s_p.norm2()) == [25] * 4  # noqa: F821
    assert rc[:].apply_sync(lambda p: p.norm2(), Point(1, 1)) == [2] * 4


def test_kwargs(rc):
    def f(a, b=1, *args, c=2, **kw):
        return (a, b, args, c, sorted(kw.items()))

    assert rc[0].apply_sync(f, 1) == (1, 1, (), 2, [])
    assert rc[:].apply_sync(f, 1, 2, 3, c=4, d=5) == [(1, 2, (3,), 4, [("d", 5)])] * 4
    assert rc[1].apply_async(f, a=9, c=0).get(30) == (9, 1, (), 0, [])


def test_builtin_function(rc):
    assert rc[:].apply_sync(sum, [1, 2, 3]) == [6] * 4
    assert rc[0].apply_sync(max, 3, 9, 4) == 9


# --------------------------------------------------------------------------- clients
def test_several_clients_at_once(rc, job):
    rc2 = pcluster.Client(str(job.path))
    try:
        rc[:].push(dict(s_shared=1), block=True)
        assert rc2[:]["s_shared"] == [1] * 4
        # interleaved non-blocking requests from both clients
        a1 = [rc[:].apply_async(lambda k: k, k) for k in range(20)]
        a2 = [rc2[:].apply_async(lambda k: -k, k) for k in range(20)]
        assert [a.get(60) for a in a1] == [[k] * 4 for k in range(20)]
        assert [a.get(60) for a in a2] == [[-k] * 4 for k in range(20)]
        rc2.close()
        # closing one client leaves the other (and the job) working
        assert rc[:].apply_sync(lambda: "still here") == ["still here"] * 4
    finally:
        rc2.close()


def test_context_manager_and_env_default(job, monkeypatch):
    monkeypatch.setenv("PCLUSTER_CONNECTION_FILE", str(job.path))
    assert pcluster.default_connection_file() == str(job.path)
    with pcluster.Client() as c:
        assert c.ids == IDS
        assert c[0].apply_sync(whoami) == 0


def test_client_from_dict(job):
    import json

    info = json.loads(job.path.read_text())
    with pcluster.Client(info) as c:
        assert c[:].apply_sync(whoami) == IDS


def test_bad_targets(rc):
    with pytest.raises(IndexError):
        rc[4]
    with pytest.raises(IndexError):
        rc[[0, 7]]
    with pytest.raises(ValueError):
        rc[[1, 1]]
    with pytest.raises(TypeError):
        rc[:].push([("a", 1)], block=True)
    with pytest.raises(TypeError):
        rc[:].execute(42, block=True)
    with pytest.raises(TypeError):
        rc[:].apply_sync(42)
    # nothing above reached the engines in a way that broke them
    assert rc[:].apply_sync(whoami) == IDS
