"""The client operations timed identically against ipyparallel and pcluster, which share one client API."""

import numpy as np

import benchlib as bl
from benchlib import BIG_BYTES, N_ENGINES, SCATTER_BYTES, SMALL_DICT, error_text, log, time_op


def _payload(nbytes, seed):
    """Random bytes: no operation can shortcut constant or zero pages."""
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


class _Runner:
    """Times operations into `results`; one failing operation never stops the others."""

    def __init__(self, results):
        self.results = results
        self.last = {}  # result of the most recent timed call, for its check

    def remember(self, fn):
        def call():
            self.last["v"] = fn()

        return call

    def measure(self, key, fn, reps, setup=None, check=None, teardown=None):
        """setup(), time fn() `reps`=(repeats, warmup) times, check() the outcome, always teardown()."""
        try:
            if setup:
                setup()
            self.results[key] = time_op(fn, *reps)
            if check:
                check()
        except Exception as exc:
            self.results[key] = {"error": error_text(exc)}
            log(f"{key}: {error_text(exc)}")
        finally:
            self.last.clear()
            if teardown:
                try:
                    teardown()
                except Exception as exc:
                    log(f"{key} teardown: {error_text(exc)}")


def _expect(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def _latency_ops(run, one, dv, noop, reps):
    run.measure(
        "apply_one",
        run.remember(lambda: one.apply_sync(noop)),
        reps,
        check=lambda: _expect("apply_sync(noop)", run.last["v"], None),
    )
    run.measure(
        "push_small",
        lambda: dv.push(SMALL_DICT),
        reps,
        check=lambda: _expect("pull('c') after push", list(dv.pull("c")), ["hello"] * N_ENGINES),
    )
    run.measure(
        "pull_small",
        run.remember(lambda: dv.pull("a")),
        reps,
        check=lambda: _expect("pull('a')", list(run.last["v"]), [1] * N_ENGINES),
    )
    run.measure(
        "execute_all",
        lambda: dv.execute("x=1", block=True),
        reps,
        setup=lambda: dv.execute("x=0", block=True),
        check=lambda: _expect("pull('x') after execute", list(dv.pull("x")), [1] * N_ENGINES),
    )


def _push_pull_ops(run, dv, reps):
    data = _payload(BIG_BYTES, 1)

    def check_push():
        dv.execute("big_n = int(big.nbytes); big_last = int(big[-1])", block=True)
        _expect("big.nbytes on engines", list(dv.pull("big_n")), [BIG_BYTES] * N_ENGINES)
        _expect("big[-1] on engines", list(dv.pull("big_last")), [int(data[-1])] * N_ENGINES)

    run.measure(
        "push_100MiB",
        lambda: dv.push({"big": data}),
        reps,
        check=check_push,
        teardown=lambda: dv.execute("big = None", block=True),
    )

    def check_pull():
        got = [np.asarray(a) for a in run.last["v"]]
        _expect("number of arrays pulled", len(got), N_ENGINES)
        _expect("bytes per pulled array", [int(a.nbytes) for a in got], [BIG_BYTES] * N_ENGINES)
        _expect("last byte of pulled arrays", [int(a[-1]) for a in got], [7] * N_ENGINES)

    run.measure(
        "pull_100MiB",
        run.remember(lambda: dv.pull("big_out")),
        reps,
        setup=lambda: dv.execute(
            f"import numpy as np; big_out = np.full({BIG_BYTES}, 7, dtype=np.uint8)", block=True
        ),
        check=check_pull,
        teardown=lambda: dv.execute("big_out = None", block=True),
    )


def _scatter_gather_ops(run, dv, reps):
    parts = _payload(SCATTER_BYTES, 2)
    per_engine = SCATTER_BYTES // N_ENGINES

    def check_scatter():
        dv.execute("part_n = len(part)", block=True)
        _expect("elements per engine after scatter", list(dv.pull("part_n")), [per_engine] * N_ENGINES)

    run.measure("scatter_80MB", lambda: dv.scatter("part", parts), reps, check=check_scatter)

    def check_gather():
        got = np.asarray(run.last["v"])
        _expect("gathered bytes", int(got.nbytes), SCATTER_BYTES)
        if not np.array_equal(got, parts):
            raise AssertionError("gathered array differs from the scattered one")

    # Gathers what scatter_80MB left on the engines; if that failed, one more scatter sets it up.
    scatter_failed = "error" in run.results.get("scatter_80MB", {})
    run.measure(
        "gather_80MB",
        run.remember(lambda: dv.gather("part")),
        reps,
        setup=(lambda: dv.scatter("part", parts)) if scatter_failed else None,
        check=check_gather,
        teardown=lambda: dv.execute("part = None", block=True),
    )


def run_client_ops(rc, noop, args, results):
    """Time every CLIENT_OPS entry except start_ready into results[key].

    Contract: rc is a connected Client with N_ENGINES engines; `noop` is a zero-argument function
    defined in the caller's __main__ (so every client serializer ships it by value). Each operation
    is verified once after its timed runs; an operation that raises or returns wrong data is
    recorded as {"error": ...} and the remaining ones still run. Engines keep only small names
    (a, b, c, x, big_n, ...) afterwards; the big arrays are released.
    """
    ids = list(rc.ids)
    if len(ids) < N_ENGINES:
        raise RuntimeError(f"need {N_ENGINES} engines, client sees {ids}")
    one = rc[ids[0]]
    dv = rc[:]
    dv.block = True  # both default to non-blocking: time whole round trips
    run = _Runner(results)
    _latency_ops(run, one, dv, noop, (args.small_repeats, args.small_warmup))
    big = (args.big_repeats, args.big_warmup)
    _push_pull_ops(run, dv, big)
    _scatter_gather_ops(run, dv, big)


def _throughput(rc, noop, n):
    """Seconds to submit n applies without blocking, one engine after the other, and have every
    result back."""
    views = [rc[i] for i in rc.ids[:N_ENGINES]]
    for v in views:
        v.block = False

    def burst():
        ars = [views[i % len(views)].apply(noop) for i in range(n)]
        for ar in ars:
            if ar.get(timeout=600) is not None:
                raise AssertionError("apply(noop) returned something")

    return burst


def run_throughput(rc, noop, n, repeats, results, key="apply_burst"):
    """results[key]: time of `n` non-blocking single-engine applies (round robin over the
    engines) until all results are back, plus n itself and the rate in requests/s."""
    run = _Runner(results)
    bl.settle()
    run.measure(key, _throughput(rc, noop, n), (repeats, 1))
    rec = results.get(key, {})
    if "median_s" in rec:
        rec["n"] = n
        rec["rate_per_s"] = n / rec["median_s"]
