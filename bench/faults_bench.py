"""Figures of issue 10 (engines die, the job lives), on this machine, in one run:

- death: from an engine's death (os._exit / SIGKILL / SIGSEGV on the controller's host) to the
  client's EngineDied for a request waiting on it;
- interrupt: from ar.interrupt() to the KeyboardInterrupt that ends a running time.sleep(100);
- idle CPU of a whole job (every rank, the bridge and mpirun) with nothing to do, for the build
  given and, with --old-build, another build beside it (before/after), at each engine count.

Run: /usr/bin/python3 bench/faults_bench.py [--build-dir build] [--old-build DIR] [--engines 4,64]
     [--repeats 10] [--idle-seconds 30] [--json OUT]
Deaths on another host are measured by tests/cluster (heartbeats: PCLUSTER_DEAD_AFTER_S).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib as bl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(build, engines, tmp):
    conn = os.path.join(tmp, f"conn-{engines}-{time.monotonic_ns()}.json")
    log = open(conn + ".log", "w")
    cmd = ["mpirun", "--enable-recovery", "-n", str(engines + 1), "--oversubscribe",
           os.path.join(build, "bin", "pcluster"), "--connection-file", conn]
    proc = subprocess.Popen(cmd, env=bl.pcluster_env(os.path.join(build, "bin"), os.path.join(build, "python")),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60 + engines
    while not os.path.exists(conn):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the job did not start: {bl.tail(conn + '.log')}")
        time.sleep(0.05)
    return proc, conn


def client(build, conn, engines):
    sys.path.insert(0, os.path.join(build, "python"))
    import pcluster

    rc = pcluster.Client(conn, timeout=60)
    assert len(rc.ids) == engines
    return pcluster, rc


def in_build(build, code):
    """Runs `code` (with os and pcluster imported) under the pcluster of `build`."""
    env = dict(os.environ, PYTHONPATH=os.path.join(build, "python"))
    subprocess.run([sys.executable, "-c", "import os, pcluster\n" + code], env=env, check=True, timeout=120)


def stop(proc, rc):
    try:
        rc.shutdown(timeout=60)
    except Exception:
        pass
    bl.kill_tree(proc)


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def idle_cpu(build, engines, seconds, tmp):
    """Percent of one core the idle job uses (every process under mpirun, and the bridge)."""
    proc, conn = start(build, engines, tmp)
    # The client of that build, in a process of its own (this one may hold another build's
    # pcluster): every engine answers once, then the job idles with nobody attached.
    in_build(build, f"rc = pcluster.Client({conn!r}, timeout=60); assert len(rc[:].apply_sync(os.getpid)) == {engines}")
    time.sleep(5)  # settle past every back-off phase
    pids = set(bl.descendants(proc.pid)) | {proc.pid}
    with open(conn) as f:
        pids.add(json.load(f)["bridge_pid"])
    t0, c0 = time.monotonic(), cpu_ticks(pids)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_ticks(pids)
    try:
        in_build(build, f"pcluster.Client({conn!r}, timeout=60).shutdown(timeout=60)")
    finally:
        bl.kill_tree(proc)
    return 100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)


def deaths(build, repeats, tmp):
    out = {}
    for how in ("exit", "sigkill", "sigsegv"):
        samples = []
        for _ in range(repeats):
            proc, conn = start(build, 3, tmp)
            pcluster, rc = client(build, conn, 3)
            pid = rc[1].apply_sync(os.getpid)
            if how == "sigkill":
                ar = rc[1].apply_async(time.sleep, 60)
                time.sleep(0.2)
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
            else:
                code = "import os; os._exit(3)" if how == "exit" else "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
                t0 = time.perf_counter()
                ar = rc[1].execute(code, block=False)
            try:
                ar.get(30)
            except pcluster.EngineDied:
                samples.append(time.perf_counter() - t0)
            stop(proc, rc)
        out[how] = samples
    return out


def interrupts(build, repeats, tmp):
    proc, conn = start(build, 2, tmp)
    pcluster, rc = client(build, conn, 2)
    samples = []
    for _ in range(repeats):
        ar = rc[0].execute("import time; time.sleep(100)", block=False)
        time.sleep(0.3)
        t0 = time.perf_counter()
        ar.interrupt()
        try:
            ar.get(30)
        except pcluster.RemoteError:
            samples.append(time.perf_counter() - t0)
    stop(proc, rc)
    return samples


def ms(xs):
    return f"{1000 * statistics.median(xs):.1f} ms (min {1000 * min(xs):.1f}, max {1000 * max(xs):.1f}, n={len(xs)})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    ap.add_argument("--old-build", help="another build to measure idle CPU beside (before/after)")
    ap.add_argument("--engines", default="4,64")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    build = os.path.abspath(args.build_dir)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        res["death_s"] = deaths(build, args.repeats, tmp)
        for how, xs in res["death_s"].items():
            print(f"death ({how}) to the client's EngineDied: {ms(xs)}", flush=True)
        res["interrupt_s"] = interrupts(build, args.repeats, tmp)
        print(f"interrupt() to KeyboardInterrupt in time.sleep: {ms(res['interrupt_s'])}", flush=True)
        res["idle_cpu_percent"] = {}
        for n in [int(x) for x in args.engines.split(",")]:
            row = {"new": idle_cpu(build, n, args.idle_seconds, tmp)}
            if args.old_build:
                row["old"] = idle_cpu(os.path.abspath(args.old_build), n, args.idle_seconds, tmp)
            res["idle_cpu_percent"][n] = row
            print(f"idle job, {n} engines: " + ", ".join(f"{k} {v:.1f}% of a core" for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
