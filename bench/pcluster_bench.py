"""pcluster numbers: the client operations against `mpirun -n 5 pcluster` (controller + 4 engines).

Run: /usr/bin/python3 bench/pcluster_bench.py --json OUT.json [--quick] [--build-dir build]
Starts the job itself, times it until the client sees 4 engines, runs the same operations as
ipyparallel_bench.py, then rc.shutdown(); mpirun and its ranks are killed on any failure.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import benchlib as bl
from clientops import run_client_ops, run_throughput

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def noop():
    """Remote no-op for the apply round trip."""


def launch(exe, bin_dir, py_dir, conn_file, log_file, engines):
    """Starts `mpirun -n engines+1 pcluster`, output to log_file: (process, command line, start
    time)."""
    cmd = ["mpirun", "--enable-recovery", "-n", str(engines + 1), "--oversubscribe", exe, "--connection-file", conn_file]
    t0 = time.perf_counter()
    with open(log_file, "w") as logf:
        proc = subprocess.Popen(cmd, env=bl.pcluster_env(bin_dir, py_dir), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return proc, " ".join(cmd), t0


def connect(pcluster, proc, conn_file, log_file, t0, limit, engines=bl.N_ENGINES):
    """Client attached to the job once its connection file exists and `engines` engines are registered.

    Retries Client() until `limit` seconds after t0, since the file may be seen half-written; fails
    early with mpirun's output if mpirun exits first.
    """
    last_error = "connection file never appeared"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mpirun exited with {proc.returncode} before the job was ready:\n{bl.tail(log_file)}")
        if time.perf_counter() - t0 > limit:
            raise TimeoutError(
                f"pcluster not ready after {limit} s (last error: {last_error}); mpirun output:\n{bl.tail(log_file)}"
            )
        if os.path.exists(conn_file) and os.path.getsize(conn_file) > 0:
            try:
                rc = pcluster.Client(conn_file, timeout=max(1.0, limit - (time.perf_counter() - t0)))
                break
            except Exception as exc:
                last_error = bl.error_text(exc)
        time.sleep(0.002)
    while len(rc.ids) < engines:
        if proc.poll() is not None:
            raise RuntimeError(f"mpirun exited with {proc.returncode} before all engines registered:\n{bl.tail(log_file)}")
        if time.perf_counter() - t0 > limit:
            raise TimeoutError(f"only engines {rc.ids} registered after {limit} s")
        time.sleep(0.002)
    return rc


def main():
    ap = bl.part_parser(__doc__, timeout=240, ready_timeout=60, ready_what="the job to come up")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"), help="holds bin/pcluster and python/")
    ap.add_argument("--shutdown-timeout", type=float, default=30, help="limit for mpirun to exit after rc.shutdown()")
    bl.add_repeat_args(ap)
    args = ap.parse_args()
    bl.apply_quick(args)
    bl.install_deadline(args.timeout)

    build = os.path.abspath(args.build_dir)
    bin_dir, py_dir = os.path.join(build, "bin"), os.path.join(build, "python")
    exe = os.path.join(bin_dir, "pcluster")
    results = {}
    warnings = []
    out = {
        "tool": "pcluster",
        "meta": {
            "host": socket.gethostname(),
            "nproc": os.cpu_count(),
            "python": sys.executable,
            "engines": bl.N_ENGINES,
            "build_dir": build,
            "repeats": {k: getattr(args, k) for k in ("small_repeats", "small_warmup", "big_repeats", "big_warmup")},
        },
        "results": results,
        "warnings": warnings,
    }
    tmp = tempfile.mkdtemp(prefix="pcluster-bench-")
    conn_file, log_file = os.path.join(tmp, "conn.json"), os.path.join(tmp, "mpirun.log")
    proc = None
    status = 0
    try:
        if not os.access(exe, os.X_OK):
            raise FileNotFoundError(f"{exe} not found: build pcluster first (cmake --build build)")
        sys.path.insert(0, py_dir)
        import pcluster  # imported before t0: start_ready must not include the client's import

        proc, out["meta"]["command"], t0 = launch(exe, bin_dir, py_dir, conn_file, log_file, bl.N_ENGINES)
        rc = connect(pcluster, proc, conn_file, log_file, t0, args.ready_timeout)
        results["start_ready"] = bl.summarize([time.perf_counter() - t0], 0)

        run_client_ops(rc, noop, args, results)
        n = 2000 if args.quick else 10000
        reps = 1 if args.quick else 5
        rc.capture_output = False
        run_throughput(rc, noop, n, reps, results, "apply_burst_nocapture")
        rc.capture_output = True
        run_throughput(rc, noop, n, reps, results, "apply_burst")

        t_stop = time.perf_counter()
        rc.shutdown()
        try:
            proc.wait(timeout=args.shutdown_timeout)
            out["meta"]["shutdown_s"] = time.perf_counter() - t_stop
            out["meta"]["mpirun_rc"] = proc.returncode
            if proc.returncode != 0:
                warnings.append(f"mpirun exited with {proc.returncode} after rc.shutdown():\n{bl.tail(log_file)}")
        except subprocess.TimeoutExpired:
            warnings.append(f"mpirun still running {args.shutdown_timeout} s after rc.shutdown(); killed it")
    except BaseException as exc:  # noqa: B036 - Deadline and SIGTERM too: record, then clean up
        status = bl.record_failure(out, "pcluster bench", exc)
    finally:
        bl.shield_cleanup()
        if proc is not None:
            bl.kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        bl.write_json(args.json, out)
    for w in warnings:
        bl.log(f"warning: {w}")
    return status


if __name__ == "__main__":
    sys.exit(main())
