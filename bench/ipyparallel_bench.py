"""Reference numbers from ipyparallel: the pcluster client operations against a local 4-engine ipcluster.

Run: /usr/bin/python3 bench/ipyparallel_bench.py --json OUT.json [--quick]
Starts `ipcluster start -n 4 --daemonize` in a throw-away profile dir and always stops it again.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import benchlib as bl
from clientops import run_client_ops, run_throughput


def noop():
    """Remote no-op for the apply round trip."""


def cluster_pids(profile_dir):
    """{pid: start time} of the controller and engine processes listed in ipcluster's cluster file.

    Each of them leads its own session (ipcluster detaches them), so they are not our descendants;
    this is the only handle for killing them if `ipcluster stop` fails.
    """
    security = os.path.join(profile_dir, "security")
    pids = set()
    for name in os.listdir(security) if os.path.isdir(security) else []:
        if not (name.startswith("cluster-") and name.endswith(".json")):
            continue
        with open(os.path.join(security, name)) as f:
            info = json.load(f)
        pids.add(info.get("controller", {}).get("state", {}).get("pid"))
        for engine_set in info.get("engines", {}).get("sets", {}).values():
            pids.add(engine_set.get("pid"))
            for engine in engine_set.get("engines", {}).values():
                pids.add(engine.get("pid"))
    found = {}
    for pid in pids:
        if isinstance(pid, int) and pid > 1:
            st = bl.proc_stat(pid)
            if st is not None:
                found[pid] = st[1]
    return found


def stop_cluster(ipcluster, profile_dir, pids, timeout):
    """`ipcluster stop`, then SIGKILL to the process group of any listed process still alive."""
    try:
        subprocess.run(
            [ipcluster, "stop", f"--profile-dir={profile_dir}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        bl.log(f"ipcluster stop took more than {timeout} s; killing the cluster processes")
    time.sleep(1.0)  # a nanny may outlive `ipcluster stop` by about a second
    for pid, start in pids.items():
        st = bl.proc_stat(pid)
        if st is not None and st[1] == start:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def main():
    ap = bl.part_parser(__doc__, timeout=300, ready_timeout=90)
    ap.add_argument("--stop-timeout", type=float, default=60, help="limit for `ipcluster stop`")
    bl.add_repeat_args(ap)
    args = ap.parse_args()
    bl.apply_quick(args)
    bl.install_deadline(args.timeout)

    results = {}
    out = {
        "tool": "ipyparallel",
        "meta": {
            "host": socket.gethostname(),
            "nproc": os.cpu_count(),
            "python": sys.executable,
            "engines": bl.N_ENGINES,
            "repeats": {k: getattr(args, k) for k in ("small_repeats", "small_warmup", "big_repeats", "big_warmup")},
        },
        "results": results,
    }
    ipcluster = shutil.which("ipcluster") or "/usr/bin/ipcluster"
    profile_dir = tempfile.mkdtemp(prefix="pcluster-bench-ipp-")
    start_log = os.path.join(profile_dir, "ipcluster-start.log")
    pids = {}
    status = 0
    try:
        import ipyparallel as ipp

        out["meta"]["version"] = ipp.__version__
        # start_ready: from launching ipcluster until the client sees all engines registered.
        t0 = time.perf_counter()
        with open(start_log, "w") as logf:
            started = subprocess.run(
                [ipcluster, "start", "-n", str(bl.N_ENGINES), "--daemonize", f"--profile-dir={profile_dir}"],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=args.ready_timeout,
            )
        pids = cluster_pids(profile_dir)
        if started.returncode != 0:
            raise RuntimeError(f"ipcluster start exited with {started.returncode}:\n{bl.tail(start_log)}")
        left = max(1.0, args.ready_timeout - (time.perf_counter() - t0))
        rc = ipp.Client(profile_dir=profile_dir, timeout=left)
        left = max(1.0, args.ready_timeout - (time.perf_counter() - t0))
        rc.wait_for_engines(bl.N_ENGINES, timeout=left, interactive=False)
        results["start_ready"] = bl.summarize([time.perf_counter() - t0], 0)
        pids.update(cluster_pids(profile_dir))

        run_client_ops(rc, noop, args, results)
        # ipyparallel manages a few hundred to a few thousand applies per second: fewer of them
        # give its rate within the time limit.
        run_throughput(rc, noop, 500 if args.quick else 2000, 1 if args.quick else 3, results)
        rc.close()
    except BaseException as exc:  # noqa: B036 - Deadline and SIGTERM too: record, then clean up
        status = bl.record_failure(out, "ipyparallel bench", exc)
    finally:
        bl.shield_cleanup()
        t_stop = time.perf_counter()
        pids.update(cluster_pids(profile_dir))
        stop_cluster(ipcluster, profile_dir, pids, args.stop_timeout)
        out["meta"]["stop_s"] = time.perf_counter() - t_stop
        shutil.rmtree(profile_dir, ignore_errors=True)
        bl.write_json(args.json, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
