"""joblib on the engines (issue 12, requirement 6): a load-balanced view registered as a joblib
backend runs Parallel's batches as tasks, with joblib's own API unchanged."""

import os

import pytest

joblib = pytest.importorskip("joblib", reason="python3-joblib is installed by scripts/install-deps.sh")
from joblib import Parallel, delayed, parallel_backend  # noqa: E402

from conftest import NUM_ENGINES  # noqa: E402


def where(x):
    import os

    return x * x, os.getpid()


def test_parallel_runs_on_the_engines_in_order(rc):
    rc.load_balanced_view().register_joblib_backend()
    with parallel_backend("pcluster"):
        out = Parallel()(delayed(where)(i) for i in range(200))
    assert [v for v, _ in out] == [i * i for i in range(200)]
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids
    engine_pids = set(rc[:].apply_sync(os.getpid))
    assert pids <= engine_pids


def test_n_jobs_counts_the_views_engines(rc):
    rc.load_balanced_view().register_joblib_backend()
    with parallel_backend("pcluster"):
        assert joblib.effective_n_jobs(-1) == NUM_ENGINES
        assert joblib.effective_n_jobs(2) == 2
        assert joblib.effective_n_jobs(-2) == NUM_ENGINES - 1
    rc.load_balanced_view(targets=[0, 1]).register_joblib_backend("two")
    with parallel_backend("two"):
        assert joblib.effective_n_jobs(-1) == 2
        out = Parallel(n_jobs=-1)(delayed(where)(i) for i in range(20))
    assert {pid for _, pid in out} <= set(rc[[0, 1]].apply_sync(os.getpid))


def test_ipyparallel_code_runs_unchanged(rc):
    import pcluster as ipp

    assert isinstance(rc, ipp.Client)
    bview = rc.load_balanced_view()
    bview.register_joblib_backend()
    with parallel_backend("ipyparallel"):
        assert Parallel()(delayed(abs)(-i) for i in range(10)) == list(range(10))


def test_an_error_in_a_call_reaches_the_caller_and_stops_the_rest(rc):
    rc.load_balanced_view().register_joblib_backend()

    def f(x):
        if x == 7:
            raise ValueError(f"bad item {x}")
        return x

    with parallel_backend("pcluster"), pytest.raises(Exception) as e:
        Parallel(batch_size=1)(delayed(f)(i) for i in range(50))
    assert "ValueError" in str(e.value) and "bad item 7" in str(e.value)
    # The view serves on.
    with parallel_backend("pcluster"):
        assert Parallel()(delayed(f)(i) for i in range(5)) == list(range(5))
