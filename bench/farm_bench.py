"""Task-farm numbers: load-balanced tasks on 4 workers, pcluster against three peers.

Run: /usr/bin/python3 bench/farm_bench.py --peer PEER --json OUT.json [--quick] [--timeout S]
        [--build-dir build] [--engines N] [--workloads apply,map,sleep]
PEER is one of
  pcluster     `mpirun -n N+1 --oversubscribe pcluster -f CONN`, rc.load_balanced_view()
  ipyparallel  `ipcluster start -n 4 --daemonize`, rc.load_balanced_view()
  dask         distributed.LocalCluster(n_workers=4, threads_per_worker=1, processes=True)
  mpi4py       `mpirun -n 5 --oversubscribe python -m mpi4py.futures farm_bench.py --inner`,
               MPIPoolExecutor (rank 0 runs this script, ranks 1-4 are the workers)
Workloads (the task bodies below are the same for every peer):
  apply  n no-op tasks submitted one at a time, then every result collected: tasks/s
  map    a map over n items in chunks of 1000 items: items/s
  sleep  n tasks of time.sleep(0.01) submitted one at a time: efficiency = (n * 10 ms / workers) / time
Every timed run is checked afterwards (the values, in order), so a broken run is an error, not a
number. The peer's cluster is always stopped, and whatever this process started is killed, on any
failure, --timeout or SIGTERM.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import benchlib as bl

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS = ("pcluster", "ipyparallel", "dask", "mpi4py")
WORKLOADS = ("apply", "map", "sleep")
CHUNK = 1000  # items per map task, every peer
SLEEP_S = 0.01


# --- the task bodies, identical for every peer. Defined in __main__ so that pcluster, ipyparallel
# and dask ship them by value; mpi4py.futures workers import this file and find them by name.
# `time` is imported in the body because ipyparallel runs shipped functions in the engine's
# namespace, not this module's.
def echo(x):
    return x


def square(x):
    return x * x


def sleep10(x):
    import time

    time.sleep(0.01)
    return x


# --- sizes: (n, timed repeats) per workload. ipyparallel manages a few hundred tasks per second and
# dask.distributed a few hundred to a few thousand here, so they get fewer one-by-one tasks: rates
# per second are comparable, totals are not (the report gives n).
FULL = {"apply": (10_000, 5), "map": (100_000, 5), "sleep": (1_000, 3)}
FULL_IPP = {"apply": (1_000, 3), "map": (100_000, 3), "sleep": (200, 3)}
FULL_DASK = {"apply": (3_000, 3), "map": (100_000, 5), "sleep": (1_000, 3)}
QUICK = {"apply": (2_000, 1), "map": (20_000, 1), "sleep": (200, 1)}
QUICK_IPP = {"apply": (300, 1), "map": (20_000, 1), "sleep": (100, 1)}


def sizes(peer, quick):
    if peer == "ipyparallel":
        return QUICK_IPP if quick else FULL_IPP
    if peer == "dask":
        return QUICK if quick else FULL_DASK
    return QUICK if quick else FULL


# --- peers: each gives submit(f, x) -> future, results(futures) -> values in order,
# map(f, seq) -> values in order (chunks of CHUNK items).
class PclusterPeer:
    def __init__(self, rc):
        self.lv = rc.load_balanced_view()

    def submit(self, f, x):
        return self.lv.apply_async(f, x)

    def results(self, futures):
        return [ar.get() for ar in futures]

    def map(self, f, seq):
        return self.lv.map_async(f, seq, chunksize=CHUNK).get()


class IpyparallelPeer(PclusterPeer):
    """Same client calls as pcluster (ipyparallel's API); get() with a limit, as ipyparallel
    blocks in a loop that checks for it."""

    def results(self, futures):
        return [ar.get(timeout=600) for ar in futures]

    def map(self, f, seq):
        return self.lv.map_async(f, seq, chunksize=CHUNK).get(timeout=600)


def _dask_chunk(f, items):
    """One dask task per chunk: the mapped function over CHUNK items."""
    return [f(x) for x in items]


class DaskPeer:
    """client.submit / client.map; pure=False, or dask would hand back cached results of the
    identical tasks of an earlier repeat."""

    def __init__(self, client):
        self.client = client

    def submit(self, f, x):
        return self.client.submit(f, x, pure=False)

    def results(self, futures):
        return self.client.gather(futures)

    def map(self, f, seq):
        chunks = [list(seq[lo : lo + CHUNK]) for lo in range(0, len(seq), CHUNK)]
        futures = self.client.map(_dask_chunk, [f] * len(chunks), chunks, pure=False)
        out = []
        for part in self.client.gather(futures):
            out.extend(part)
        return out


class Mpi4pyPeer:
    def __init__(self, executor):
        self.ex = executor

    def submit(self, f, x):
        return self.ex.submit(f, x)

    def results(self, futures):
        return [fut.result() for fut in futures]

    def map(self, f, seq):
        return list(self.ex.map(f, seq, chunksize=CHUNK))


# --- workloads
def _check(what, got, want):
    if len(got) != len(want):
        raise AssertionError(f"{what}: expected {len(want)} results, got {len(got)}")
    if got != want:
        bad = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        raise AssertionError(f"{what}: result {bad} is {got[bad]!r}, expected {want[bad]!r}")


def _tasks(peer, f, n):
    """Submit f(0..n-1) one task at a time, then collect every result."""
    futures = [peer.submit(f, i) for i in range(n)]
    return peer.results(futures)


def run_workload(peer, name, n, repeats, workers):
    """Warm-up, `repeats` timed runs each checked; the record for the JSON."""
    if name == "apply":
        def once(k):
            return _tasks(peer, echo, k), list(range(k))
    elif name == "map":
        def once(k):
            return peer.map(square, range(k)), [i * i for i in range(k)]
    else:
        def once(k):
            return _tasks(peer, sleep10, k), list(range(k))

    # Warm-ups reach the steady state the timed runs measure: a first burst of n tasks pays for
    # growing every process's heap (page faults cost more than the work on this kind of VM).
    warm = {"apply": n, "map": min(n, 10 * CHUNK), "sleep": min(n, 100)}[name]
    got, want = once(warm)
    _check(f"{name} warm-up", got, want)
    bl.settle()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        got, want = once(n)
        samples.append(time.perf_counter() - t0)
        _check(name, got, want)  # outside the timed part
        got = want = None
    rec = bl.summarize(samples, 1)
    rec["items"] = n
    rec["rate_per_s"] = n / rec["median_s"]
    if name == "sleep":
        rec["ideal_s"] = n * SLEEP_S / workers
        rec["efficiency"] = rec["ideal_s"] / rec["median_s"]
    return rec


def run_workloads(peer, args, results, workers):
    table = sizes(args.peer, args.quick)
    for name in args.workloads:
        n, repeats = table[name]
        if args.n is not None:
            n = args.n
        try:
            results[name] = run_workload(peer, name, n, repeats, workers)
            bl.log(f"{args.peer} {name}: {results[name]['rate_per_s']:,.0f}/s over {n:,}")
        except Exception as exc:
            results[name] = {"error": bl.error_text(exc), "items": n}
            bl.log(f"{args.peer} {name}: {results[name]['error']}")


# --- pcluster
def bench_pcluster(args, out, cleanup):
    import pcluster_bench

    build = os.path.abspath(args.build_dir)
    bin_dir, py_dir = os.path.join(build, "bin"), os.path.join(build, "python")
    exe = os.path.join(bin_dir, "pcluster")
    if not os.access(exe, os.X_OK):
        raise FileNotFoundError(f"{exe} not found: build pcluster first")
    sys.path.insert(0, py_dir)
    import pcluster

    if not hasattr(pcluster.Client, "load_balanced_view"):
        raise RuntimeError(f"the pcluster client in {py_dir} has no load_balanced_view")
    out["meta"]["build_dir"] = build
    tmp = tempfile.mkdtemp(prefix="pcluster-farm-")
    cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    conn_file, log_file = os.path.join(tmp, "conn.json"), os.path.join(tmp, "mpirun.log")
    proc, out["meta"]["command"], t0 = pcluster_bench.launch(exe, bin_dir, py_dir, conn_file, log_file, args.engines)
    cleanup.append(lambda: bl.kill_tree(proc))  # after a clean shutdown this does nothing
    rc = pcluster_bench.connect(pcluster, proc, conn_file, log_file, t0, args.ready_timeout, args.engines)
    out["meta"]["ready_s"] = time.perf_counter() - t0
    if len(rc.ids) != args.engines:
        raise RuntimeError(f"expected {args.engines} engines, client sees {len(rc.ids)}")
    run_workloads(PclusterPeer(rc), args, out["results"], args.engines)
    rc.shutdown()
    try:
        proc.wait(timeout=args.stop_timeout)
        if proc.returncode != 0:
            out["warnings"].append(f"mpirun exited with {proc.returncode} after rc.shutdown():\n{bl.tail(log_file)}")
    except subprocess.TimeoutExpired:
        out["warnings"].append(f"mpirun still running {args.stop_timeout} s after rc.shutdown(); killed it")


# --- ipyparallel
def bench_ipyparallel(args, out, cleanup):
    import ipyparallel as ipp
    import ipyparallel_bench as ib

    out["meta"]["version"] = ipp.__version__
    ipcluster = shutil.which("ipcluster") or "/usr/bin/ipcluster"
    profile_dir = tempfile.mkdtemp(prefix="pcluster-farm-ipp-")
    start_log = os.path.join(profile_dir, "ipcluster-start.log")
    pids = {}

    def stop():
        pids.update(ib.cluster_pids(profile_dir))
        ib.stop_cluster(ipcluster, profile_dir, pids, args.stop_timeout)
        shutil.rmtree(profile_dir, ignore_errors=True)

    cleanup.append(stop)
    t0 = time.perf_counter()
    with open(start_log, "w") as logf:
        started = subprocess.run(
            [ipcluster, "start", "-n", str(bl.N_ENGINES), "--daemonize", f"--profile-dir={profile_dir}"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=args.ready_timeout,
        )
    pids.update(ib.cluster_pids(profile_dir))
    if started.returncode != 0:
        raise RuntimeError(f"ipcluster start exited with {started.returncode}:\n{bl.tail(start_log)}")
    rc = ipp.Client(profile_dir=profile_dir, timeout=max(1.0, args.ready_timeout - (time.perf_counter() - t0)))
    rc.wait_for_engines(bl.N_ENGINES, timeout=max(1.0, args.ready_timeout - (time.perf_counter() - t0)),
                        interactive=False)
    out["meta"]["ready_s"] = time.perf_counter() - t0
    pids.update(ib.cluster_pids(profile_dir))
    run_workloads(IpyparallelPeer(rc), args, out["results"], bl.N_ENGINES)
    rc.close()


# --- dask
def bench_dask(args, out, cleanup):
    import logging

    import dask
    import distributed

    out["meta"]["version"] = f"dask {dask.__version__}, distributed {distributed.__version__}"
    tmp = tempfile.mkdtemp(prefix="pcluster-farm-dask-")
    cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=bl.N_ENGINES, threads_per_worker=1, processes=True, dashboard_address=None,
        local_directory=tmp, silence_logs=logging.ERROR,
    )
    cleanup.append(cluster.close)
    client = distributed.Client(cluster, timeout=args.ready_timeout)
    cleanup.append(client.close)  # last in, first out: the client closes before the cluster
    client.wait_for_workers(bl.N_ENGINES, timeout=args.ready_timeout)
    out["meta"]["ready_s"] = time.perf_counter() - t0
    run_workloads(DaskPeer(client), args, out["results"], bl.N_ENGINES)


# --- mpi4py.futures: this process runs mpirun; rank 0 of that job runs bench_mpi4py_inner.
def bench_mpi4py(args, out, cleanup):
    import mpi4py

    out["meta"]["version"] = f"mpi4py {mpi4py.__version__}"
    tmp = tempfile.mkdtemp(prefix="pcluster-farm-mpi4py-")
    cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    inner_json, log_file = os.path.join(tmp, "inner.json"), os.path.join(tmp, "mpirun.log")
    # Rank 0's own limit leaves this process 30 s to see mpirun exit (--timeout 0: no limits).
    inner_limit = max(10.0, args.timeout - 30) if args.timeout and args.timeout > 0 else 0
    cmd = [
        "mpirun", "-n", str(bl.N_ENGINES + 1), "--oversubscribe", sys.executable, "-m", "mpi4py.futures",
        os.path.abspath(__file__), "--peer", "mpi4py", "--inner", "--json", inner_json,
        "--timeout", str(inner_limit), "--workloads", ",".join(args.workloads),
    ] + (["--quick"] if args.quick else []) + (["--n", str(args.n)] if args.n is not None else [])
    out["meta"]["command"] = " ".join(cmd)
    with open(log_file, "w") as logf:
        proc = subprocess.Popen(cmd, env=bl.base_env(), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    cleanup.append(lambda: bl.kill_tree(proc))
    try:
        proc.wait(timeout=inner_limit + 20 if inner_limit else None)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"mpirun still running after {inner_limit + 20} s:\n{bl.tail(log_file)}")
    try:
        with open(inner_json) as f:
            inner = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"no results from rank 0 ({bl.error_text(exc)}); mpirun exited with "
                           f"{proc.returncode}:\n{bl.tail(log_file)}")
    out["results"].update(inner.get("results", {}))
    out["meta"].update({k: v for k, v in inner.get("meta", {}).items() if k not in out["meta"]})
    out["warnings"].extend(inner.get("warnings", []))
    if inner.get("error"):
        raise RuntimeError(f"rank 0: {inner['error']}\n{bl.tail(log_file)}")
    if proc.returncode != 0:
        out["warnings"].append(f"mpirun exited with {proc.returncode}:\n{bl.tail(log_file)}")


def bench_mpi4py_inner(args, out, cleanup):
    from mpi4py import MPI
    from mpi4py.futures import MPIPoolExecutor

    t0 = time.perf_counter()
    executor = MPIPoolExecutor()
    cleanup.append(lambda: executor.shutdown(wait=False, cancel_futures=True))
    executor.bootup(wait=True)
    workers = executor._max_workers if hasattr(executor, "_max_workers") else MPI.COMM_WORLD.Get_size() - 1
    out["meta"]["ready_s"] = time.perf_counter() - t0
    out["meta"]["workers"] = workers
    if workers != bl.N_ENGINES:
        raise RuntimeError(f"expected {bl.N_ENGINES} workers, the pool has {workers}")
    run_workloads(Mpi4pyPeer(executor), args, out["results"], workers)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return f"pid {pid}"


def main():
    ap = bl.part_parser(__doc__, timeout=240, ready_timeout=90)
    ap.add_argument("--peer", required=True, choices=PEERS)
    ap.add_argument("--quick", action="store_true", help="fewer tasks, one timed run: a smoke run")
    ap.add_argument("--stop-timeout", type=float, default=30, help="limit for the cluster to stop")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"), help="pcluster build (bin/, python/)")
    ap.add_argument("--engines", type=bl.positive_int, default=bl.N_ENGINES, help="pcluster only: engines to start")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--n", type=bl.positive_int, help="override the number of tasks/items of every workload")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # rank 0 under mpi4py.futures
    args = ap.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    if not args.workloads or any(w not in WORKLOADS for w in args.workloads):
        ap.error(f"--workloads: choose from {', '.join(WORKLOADS)}")
    if args.engines != bl.N_ENGINES and args.peer != "pcluster":
        ap.error("--engines is for --peer pcluster only")
    bl.install_deadline(args.timeout)

    out = {
        "tool": args.peer,
        "meta": {
            "host": socket.gethostname(),
            "nproc": os.cpu_count(),
            "python": sys.executable,
            "engines": args.engines,
            "quick": args.quick,
            "chunksize": CHUNK,
        },
        "results": {},
        "warnings": [],
    }
    bench = {
        "pcluster": bench_pcluster,
        "ipyparallel": bench_ipyparallel,
        "dask": bench_dask,
        "mpi4py": bench_mpi4py_inner if args.inner else bench_mpi4py,
    }[args.peer]
    cleanup = []  # run last-in first-out, each step on its own
    status = 0
    try:
        bench(args, out, cleanup)
    except BaseException as exc:  # noqa: B036 - Deadline and SIGTERM too: record, then clean up
        status = bl.record_failure(out, f"farm {args.peer}", exc)
    finally:
        bl.shield_cleanup()
        t_stop = time.perf_counter()
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:
                out["warnings"].append(f"cleanup: {bl.error_text(exc)}")
        out["meta"]["stop_s"] = time.perf_counter() - t_stop
        if not args.inner:
            # Whatever is still below us (a dask worker, an orphaned rank) goes now.
            me = bl.descendants(os.getpid())
            if me:
                out["meta"]["killed_leftovers"] = [_cmdline(pid) for pid in me]
                for pid, start in me.items():
                    st = bl.proc_stat(pid)
                    if st is not None and st[1] == start:
                        try:
                            os.kill(pid, 9)
                        except (ProcessLookupError, PermissionError):
                            pass
        bl.write_json(args.json, out)
    for w in out["warnings"]:
        bl.log(f"warning: {w}")
    return status


if __name__ == "__main__":
    sys.exit(main())
