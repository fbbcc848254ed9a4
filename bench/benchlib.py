"""Shared pieces of the pcluster benchmark: operation names, sizes, timing, JSON and process cleanup."""

import argparse
import json
import os
import signal
import statistics
import sys
import time

# Payload sizes. BIG is binary (MiB), SCATTER decimal (MB) as in the targets; SCATTER splits evenly over 4 engines.
BIG_BYTES = 100 * 2**20
SCATTER_BYTES = 80_000_000
N_ENGINES = 4

# Operation keys shared by ipyparallel_bench.py and pcluster_bench.py (and run.py), in table order.
CLIENT_OPS = (
    ("apply_one", "apply round trip to one engine"),
    ("push_small", "push small dict to all"),
    ("pull_small", "pull small value from all"),
    ("execute_all", "execute on all"),
    ("push_100MiB", "push 100 MiB to all"),
    ("pull_100MiB", "pull 100 MiB from each"),
    ("scatter_80MB", "scatter 80 MB"),
    ("gather_80MB", "gather 80 MB"),
    ("start_ready", "start to all engines ready"),
)

# Operation keys written by mpi4py_raw.py.
RAW_OPS = (
    ("pingpong_8B", "8 B round trip rank 0 -> 1 -> 0"),
    ("bcast_100MiB", "Bcast 100 MiB to 4"),
    ("gatherv_100MiB", "Gatherv 100 MiB from each of 4"),
    ("scatterv_80MB", "Scatterv 80 MB over 4"),
    ("gatherv_80MB", "Gatherv 80 MB from 4"),
)

SMALL_DICT = {"a": 1, "b": 2.5, "c": "hello"}


class Deadline(BaseException):
    """Raised by the --timeout alarm. A BaseException so per-operation `except Exception` cannot swallow it."""


def install_deadline(seconds):
    """Turn SIGALRM after `seconds` into Deadline and SIGTERM into SystemExit, so `finally` cleanup runs.

    Only interrupts Python code: a call stuck inside C without returning to the interpreter is not
    reached; run.py covers that by killing the process tree after a grace period.
    """

    def on_alarm(signum, frame):
        raise Deadline(f"benchmark exceeded its --timeout of {seconds} s")

    def on_term(signum, frame):
        raise SystemExit("terminated by SIGTERM")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    if seconds and seconds > 0:
        signal.alarm(int(seconds))


def part_parser(doc, timeout, ready_timeout, ready_what="the cluster to come up"):
    """The options every benchmark part takes: where its results go and its time limits."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--timeout", type=float, default=timeout, help="overall limit in seconds (cleanup still runs)")
    ap.add_argument("--ready-timeout", type=float, default=ready_timeout, help=f"limit for {ready_what}")
    return ap


def record_failure(out, what, exc):
    """A part failed (Deadline and SIGTERM's SystemExit included): the error goes in its results
    and the log; returns the exit status. Cleanup runs after this."""
    out["error"] = error_text(exc)
    log(f"{what} failed: {out['error']}")
    return 1


def positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {text}")
    return value


def add_repeat_args(parser, small=200, small_warmup=20, big=3, big_warmup=1):
    """Repeat options common to the client benches; --quick overrides whatever was given."""
    parser.add_argument("--small-repeats", type=positive_int, default=small, help="timed runs of each latency op")
    parser.add_argument("--small-warmup", type=int, default=small_warmup, help="untimed runs before those")
    parser.add_argument("--big-repeats", type=positive_int, default=big, help="timed runs of each bulk-data op")
    parser.add_argument("--big-warmup", type=int, default=big_warmup, help="untimed runs before those")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not a measurement")


def apply_quick(args):
    if args.quick:
        args.small_repeats, args.small_warmup = 30, 5
        args.big_repeats, args.big_warmup = 1, 1


def summarize(samples, warmup):
    """Result record of one operation (samples in seconds, at least one); run.py reads `median_s`."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "mean_s": statistics.fmean(samples),
        "n": len(samples),
        "warmup": warmup,
        "samples_s": samples,
    }


def time_op(fn, repeats, warmup):
    """summarize() of fn()'s wall time over `repeats` timed calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return summarize(samples, warmup)


def error_text(exc):
    return f"{type(exc).__name__}: {exc}".strip()


def write_json(path, obj):
    """Atomic write, so a reader never sees half a file even if we are killed mid-way."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def base_env():
    """Environment for mpirun here: root is allowed, and more ranks than cores are allowed."""
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
    )
    return env


def proc_stat(pid):
    """(ppid, start time in clock ticks) of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and ')', so count fields from the last ')': ppid is field 4,
    # starttime field 22.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def descendants(pid):
    """{pid: start time} of all live descendants of pid, read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append((int(entry), st[1]))
    found, todo = {}, [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            found[child] = start
            todo.append(child)
    return found


def kill_tree(proc, grace=10.0):
    """Stop a Popen we started and everything below it: SIGTERM to proc, then SIGKILL to stragglers.

    The tree is snapshotted before the SIGTERM because mpirun's ranks are reparented once it dies and
    would no longer be found as its descendants; a pid is only killed while its start time still
    matches the snapshot, so a recycled pid is never hit.
    """
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    try:
        proc.terminate()
        proc.wait(timeout=grace)
    except Exception:
        pass
    if proc.poll() is None:  # once reaped, proc.pid may belong to someone else
        tree.update(descendants(proc.pid))
    for pid, start in tree.items():
        st = proc_stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except Exception:
        pass


def tail(path, n=2000):
    """Last n characters of a log file, for error messages."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def shield_cleanup():
    """Call first thing in a `finally` that stops clusters: no alarm or SIGTERM may cut the cleanup short."""
    signal.alarm(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def pcluster_env(bin_dir, py_dir):
    """base_env() with a pcluster build's bin/ on PATH and its python/ on PYTHONPATH."""
    env = base_env()
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (py_dir, env.get("PYTHONPATH")) if p)
    return env


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return idle, sum(v)


def settle(min_idle=0.85, window=0.5, limit=20.0):
    """Wait until the machine is at least `min_idle` idle over `window` seconds (at most `limit`
    seconds): what an earlier part left behind (a cluster shutting down, freed memory being
    reclaimed) must not be timed as part of the next measurement. Returns the idle fraction."""
    deadline = time.monotonic() + limit
    frac = 0.0
    while time.monotonic() < deadline:
        i0, t0 = _cpu_times()
        time.sleep(window)
        i1, t1 = _cpu_times()
        frac = (i1 - i0) / max(1, t1 - t0)
        if frac >= min_idle:
            break
    return frac
