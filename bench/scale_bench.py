"""Scale table (issue 13): pcluster at growing engine counts, each figure beside raw mpi4py on the
same placement, with the issue's targets as pass/fail columns, in one command.

Run: /usr/bin/python3 bench/scale_bench.py --engines 4,8,16,32,64 [--engines 128,256]
        --json OUT.json [--plot docs/scaling.png] [--quick] [--build-dir build]
     /usr/bin/python3 bench/scale_bench.py --replot OUT.json [--plot docs/scaling.png]   (no jobs run)

For each N (engines), in order:
  raw   `mpirun -n N+1 --oversubscribe python scale_bench.py --raw-rank-program ...`: rank 0 plays the
        controller: startup (mpirun launched -> rank 0 past a Barrier after MPI_Init), 8 B ping-pong
        to rank 1, small dict comm.bcast + comm.gather back, 2 MB Bcast + Barrier, 2 MB Send to rank 1
        + 1-byte ack. Timing as bench/mpi4py_raw.py (a Barrier before each run, rank 0's clock).
        This job is also the probe: when mpirun cannot start N+1 ranks, N is skipped with the reason.
  pcluster `mpirun -n N+1 --oversubscribe --enable-recovery pcluster`: ready (mpirun launched -> the
        client sees N engines), idle CPU of the whole job (mpirun, every rank, the bridge; client
        attached and idle) over --idle-seconds after every engine answered once and the job settled
        --idle-settle s, apply_sync(noop) to one engine, push {'a': 1} to all, pull 'a' from all,
        push 2 MB (numpy) to all and to one, load-balanced no-op tasks/s (bench/farm_bench.py's
        workload 1).
Medians throughout. Output: a Markdown table on stdout, the JSON (rewritten after every N) and,
with --plot, a PNG (matplotlib, Agg). Every job is killed on any failure; each N has its own time
limit (--per-n-timeout) inside the overall --timeout, and a job over it is killed and reported.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import benchlib as bl
import faults_bench
import farm_bench
import pcluster_bench
import run as suite

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MB2 = 2_000_000
SMALL = {"a": 1}
RANK_MIB = 64  # memory a rank needs at least (a pcluster engine is a Python with numpy): the pre-check
MPL_MSG = ("the plot needs matplotlib, which {py} cannot import ({err}): apt install python3-matplotlib "
           "(or leave out --plot; --replot OUT.json draws it later from the JSON)")

# (key, label, pcluster value, raw value beside it, kind): kind "time" in s, "pct", "rate" per s.
MEASURES = (
    ("ready", "ready", "ready_s", "ready_s", "time"),
    ("idle", "idle CPU, % of a core", "idle_cpu_percent", None, "pct"),
    ("apply", "apply to one / raw ping-pong", "apply_one", "pingpong_8B", "time"),
    ("push_small", "push small to all / raw bcast+gather", "push_small_all", "bcast_gather_small", "time"),
    ("pull_small", "pull small from all / raw bcast+gather", "pull_small_all", "bcast_gather_small", "time"),
    ("push_2MB_all", "push 2 MB to all / raw Bcast", "push_2MB_all", "bcast_2MB", "time"),
    ("push_2MB_one", "push 2 MB to one / raw Send+ack", "push_2MB_one", "send_2MB_one", "time"),
    ("tasks", "load-balanced tasks/s", "tasks_per_s", None, "rate"),
)
TARGET_COLS = (
    ("idle", "idle < 1% (4) / < 5% (≥ 63)"),
    ("push_small", "push small ≤ 2× raw (≥ 63)"),
    ("push_2MB", "2 MB all ≤ 8× one"),
    ("tasks", "tasks/s ≥ 80% of 4 (≥ 63, largest)"),
    ("ready", "ready ≤ 5 s (≤ 64) / ≤ 20 s (≤ 256)"),
)


def noop():
    """Remote no-op for the apply round trip."""


class OverLimit(Exception):
    pass


# --- time limits: one SIGALRM, re-armed per N inside the overall deadline
class Limits:
    def __init__(self, total):
        self.end = time.monotonic() + total if total and total > 0 else None

    def arm(self, seconds):
        """Alarm in `seconds`, or at the overall end if sooner; returns the seconds armed."""
        left = self.end - time.monotonic() if self.end else seconds
        if left <= 1:
            raise bl.Deadline("the overall --timeout is spent")
        armed = max(1, int(min(seconds, left)))
        signal.alarm(armed)
        return armed

    def overall_spent(self):
        return self.end is not None and time.monotonic() >= self.end - 1


# --- raw mpi4py side: this file run under mpirun
def raw_rank_program(args):
    import mpi4py_raw as raw  # MPI_Init happens here; the parent never imports mpi4py

    comm = raw.comm
    comm.Barrier()
    init_done = time.monotonic()
    if comm.rank == 0 and args.started_file:
        with open(args.started_file, "w") as f:
            f.write(f"{init_done}\n")
    results = {}
    small, big = (args.small_repeats, args.small_warmup), (args.big_repeats, args.big_warmup)
    raw.pingpong(results, args.small_repeats, args.small_warmup)

    def bcast_gather():
        comm.gather(comm.bcast(SMALL if comm.rank == 0 else None, root=0), root=0)

    results["bcast_gather_small"] = raw.timed(bcast_gather, *small)

    buf = np.zeros(MB2, np.uint8)
    if comm.rank == 0:
        buf[:] = np.random.default_rng(3).integers(0, 256, MB2, dtype=np.uint8)
    digest = comm.bcast(int(buf.sum(dtype=np.uint64)), root=0)

    def bcast2():
        comm.Bcast(buf, root=0)
        comm.Barrier()

    results["bcast_2MB"] = raw.timed(bcast2, *big)
    ok_bcast = raw.all_true(int(buf.sum(dtype=np.uint64)) == digest)
    ack = np.zeros(1, np.uint8)

    def send_one():
        if comm.rank == 0:
            comm.Send(buf, dest=1, tag=9)
            comm.Recv(ack, source=1, tag=10)
        elif comm.rank == 1:
            comm.Recv(buf, source=0, tag=9)
            comm.Send(ack, dest=0, tag=10)

    results["send_2MB_one"] = raw.timed(send_one, *big)
    ok_send = raw.all_true(int(buf.sum(dtype=np.uint64)) == digest)
    if comm.rank == 0:
        out = {"init_done_mono": init_done, "results": results,
               "checks": {"bcast_2MB": ok_bcast, "send_2MB_one": ok_send},
               "mpi": raw.MPI.Get_library_version().strip("\x00 \n").splitlines()[0].split(",")[0]}
        if not (ok_bcast and ok_send):
            out["error"] = f"data check failed: {out['checks']}"
        bl.write_json(args.json, out)


def raw_job(args, n, tmp, limit):
    """Runs the raw program on n+1 ranks: its record. Raises OverLimit with mpirun's reason when
    the ranks do not all start within the ready limit."""
    started, out_json, log_file = (os.path.join(tmp, f"raw-{n}.{x}") for x in ("started", "json", "log"))
    reps = ["--small-repeats", str(args.small_repeats), "--small-warmup", str(args.small_warmup),
            "--big-repeats", str(args.big_repeats), "--big-warmup", str(args.big_warmup)]
    cmd = ["mpirun", "-n", str(n + 1), "--oversubscribe", suite.PY, os.path.abspath(__file__), "--raw-rank-program",
           "--json", out_json, "--started-file", started] + reps
    rec = {"command": " ".join(cmd)}
    t0 = time.monotonic()
    with open(log_file, "w") as logf:
        proc = subprocess.Popen(cmd, env=bl.base_env(), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    JOBS.append(proc)
    try:
        while not os.path.exists(started):
            if proc.poll() is not None:
                why = f"mpirun could not start {n + 1} ranks (exit {proc.returncode})"
            elif time.monotonic() - t0 > limit:
                why = f"mpirun did not get {n + 1} ranks through MPI_Init in {limit:.1f} s (--ready-timeout)"
            else:
                time.sleep(0.01)
                continue
            out = bl.tail(log_file).strip()
            raise OverLimit(why + (f"; mpirun output:\n{out}" if out else ""))
        proc.wait()  # bounded by the N's alarm
        with open(out_json) as f:
            got = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"no results from rank 0 ({bl.error_text(exc)}); mpirun exit {proc.returncode}:\n"
                           f"{bl.tail(log_file)}")
    finally:
        bl.kill_tree(proc)
    rec.update(results=got["results"], mpi=got.get("mpi"), checks=got.get("checks"))
    if got.get("error"):
        rec["error"] = got["error"]
    rec["values"] = {"ready_s": got["init_done_mono"] - t0}
    rec["values"].update({k: v["median_s"] for k, v in got["results"].items()})
    return rec


# --- pcluster side
def job_pids(proc, conn_file):
    """Every process of the job: mpirun, its descendants, and the bridge (named in the connection file)."""
    pids = set(bl.descendants(proc.pid)) | {proc.pid}
    try:
        with open(conn_file) as f:
            pids.add(int(json.load(f)["bridge_pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return pids


def idle_cpu(proc, conn_file, seconds):
    """% of one core used by the whole job over `seconds`, and by this (client) process."""
    pids = job_pids(proc, conn_file)
    me0, c0, t0 = time.process_time(), faults_bench.cpu_ticks(pids), time.monotonic()
    time.sleep(seconds)
    me1, c1, t1 = time.process_time(), faults_bench.cpu_ticks(pids), time.monotonic()
    job = 100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    return job, 100.0 * (me1 - me0) / (t1 - t0), len(pids)


def _expect(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def client_ops(rc, args, n, results):
    """Times the client operations into results (medians read later); one failing op is recorded
    and the others still run."""
    ids = list(rc.ids)
    one, dv = rc[ids[0]], rc[:]
    data = np.random.default_rng(4).integers(0, 256, MB2, dtype=np.uint8)
    small, big = (args.small_repeats, args.small_warmup), (args.big_repeats, args.big_warmup)
    ops = (
        ("apply_one", lambda: _expect("apply_sync(noop)", one.apply_sync(noop), None), small, lambda: None),
        ("push_small_all", lambda: dv.push(SMALL, block=True), small,
         lambda: _expect("pull('a')", list(dv.pull("a", block=True)), [1] * n)),
        ("pull_small_all", lambda: _expect("pull('a')", list(dv.pull("a", block=True)), [1] * n), small, lambda: None),
        ("push_2MB_all", lambda: dv.push({"b2": data}, block=True), big,
         lambda: _expect("b2 sizes", list(dv.pull("b2_n", block=True)), [MB2] * n)),
        ("push_2MB_one", lambda: one.push({"b2": data}, block=True), big,
         lambda: _expect("b2 size on one", one.pull("b2_n", block=True), MB2)),
    )
    for key, fn, reps, check in ops:
        try:
            results[key] = bl.time_op(fn, *reps)
            if key.startswith("push_2MB"):
                dv.execute("b2_n = int(b2.nbytes)", block=True)
            check()
        except Exception as exc:
            results[key] = {"error": bl.error_text(exc)}
            bl.log(f"{n} engines, {key}: {results[key]['error']}")
    dv.execute("b2 = None", block=True)


def pcluster_job(args, n, tmp, ready_limit, pcluster):
    build = os.path.abspath(args.build_dir)
    bin_dir, py_dir = os.path.join(build, "bin"), os.path.join(build, "python")
    conn_file, log_file = os.path.join(tmp, f"conn-{n}.json"), os.path.join(tmp, f"pcluster-{n}.log")
    proc, command, t0 = pcluster_bench.launch(os.path.join(bin_dir, "pcluster"), bin_dir, py_dir, conn_file,
                                              log_file, n)
    JOBS.append(proc)
    rec = {"command": command, "results": {}, "warnings": []}
    vals = rec["values"] = {}
    rc = None
    try:
        rc = pcluster_bench.connect(pcluster, proc, conn_file, log_file, t0, ready_limit, n)
        vals["ready_s"] = time.perf_counter() - t0
        dv = rc[:]
        dv.execute("pass", block=True)  # every engine has answered once
        time.sleep(args.idle_settle)
        vals["idle_cpu_percent"], rec["client_cpu_percent"], rec["idle_pids"] = idle_cpu(proc, conn_file,
                                                                                         args.idle_seconds)
        client_ops(rc, args, n, rec["results"])
        vals.update({k: v["median_s"] for k, v in rec["results"].items() if "median_s" in v})
        try:
            tasks = farm_bench.run_workload(farm_bench.PclusterPeer(rc), "apply", args.tasks, args.task_repeats, n)
            rec["results"]["tasks"] = tasks
            vals["tasks_per_s"] = tasks["rate_per_s"]
        except Exception as exc:
            rec["results"]["tasks"] = {"error": bl.error_text(exc)}
            bl.log(f"{n} engines, tasks: {rec['results']['tasks']['error']}")
        t_stop = time.perf_counter()
        rc.shutdown(timeout=args.shutdown_timeout)
        try:
            proc.wait(timeout=args.shutdown_timeout)
            rec["shutdown_s"] = time.perf_counter() - t_stop
        except subprocess.TimeoutExpired:
            rec["warnings"].append(f"mpirun still running {args.shutdown_timeout} s after rc.shutdown(); killed it")
        if proc.returncode not in (None, 0):
            rec["warnings"].append(f"mpirun exited with {proc.returncode} after rc.shutdown():\n{bl.tail(log_file)}")
    finally:
        bl.kill_tree(proc)
        if rc is not None:
            rc.close()
    return rec


# --- one N
def precheck(n):
    """Why n+1 ranks cannot start here, or None: memory and open-file limits, checked up front so
    that a hopeless N is skipped rather than left to swap or hang."""
    with open("/proc/meminfo") as f:
        avail = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable")) // 1024
    if avail < (n + 1) * RANK_MIB:
        return f"{n + 1} ranks need about {(n + 1) * RANK_MIB} MiB, {avail} MiB available"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 16 * (n + 1) + 256:
        return f"open-file limit {soft} too low for {n + 1} local ranks (ulimit -n)"
    return None


def measure(args, n, tmp, limits, pcluster):
    row = {"engines": n, "ranks": n + 1}
    reason = precheck(n)
    if reason:
        row["skipped"] = reason
        return row
    ready_limit = args.ready_timeout + 0.5 * n
    for side in ("raw", "pcluster"):
        bl.settle(limit=args.settle_limit)  # the previous job's teardown is not timed here
        armed = limits.arm(args.per_n_timeout if args.per_n_timeout > 0 else 240 + 4 * n)
        try:
            if side == "raw":
                row["raw"] = raw_job(args, n, tmp, ready_limit)
            else:
                row["pcluster"] = pcluster_job(args, n, tmp, ready_limit, pcluster)
        except OverLimit as exc:
            row["skipped"] = str(exc)
            return row
        except bl.Deadline:
            if limits.overall_spent():
                raise
            row[side] = {"error": f"over the limit of {armed} s for {n} engines: job killed"}
        except Exception as exc:
            row[side] = {"error": bl.error_text(exc)}
        finally:
            signal.alarm(0)
        if "error" in row[side]:
            bl.log(f"{n} engines, {side}: {row[side]['error']}")
    return row


# --- table, targets, plot
def value(row, side, key):
    return ((row.get(side) or {}).get("values") or {}).get(key) if key else None


def all_to_one(row):
    """pcluster's 2 MB push to all ÷ to one."""
    return suite.ratio(value(row, "pcluster", "push_2MB_all"), value(row, "pcluster", "push_2MB_one"))


def targets(row, base, largest):
    """{column: (measured, limit text, met True/False/None)} for the targets that apply to this N."""
    n, out = row["engines"], {}
    pv = lambda k: value(row, "pcluster", k)  # noqa: E731
    idle = pv("idle_cpu_percent")
    if n <= 4 or n >= 63:
        lim = 1.0 if n <= 4 else 5.0
        out["idle"] = (idle, f"< {lim:g}%", None if idle is None else idle < lim)
    if n >= 63:
        r = suite.ratio(pv("push_small_all"), value(row, "raw", "bcast_gather_small"))
        out["push_small"] = (r, "≤ 2×", None if r is None else r <= 2)
    r = all_to_one(row)
    out["push_2MB"] = (r, "≤ 8×", None if r is None else r <= 8)
    if n > 4 and (n >= 63 or n == largest):
        r = suite.ratio(pv("tasks_per_s"), value(base, "pcluster", "tasks_per_s") if base else None)
        out["tasks"] = (r, "≥ 0.8×", None if r is None else r >= 0.8)
    if n <= 256:
        lim = 5.0 if n <= 64 else 20.0
        ready = pv("ready_s")
        out["ready"] = (ready, f"≤ {lim:g} s", None if ready is None else ready <= lim)
    return out


def fmt(v, kind):
    if v is None:
        return "n/a"
    return f"{v:.2f}%" if kind == "pct" else f"{suite.fmt_count(v)}/s" if kind == "rate" else suite.fmt_time(v)


def cell(row, pkey, rkey, kind):
    p = value(row, "pcluster", pkey)
    if not rkey:
        return fmt(p, kind)
    r = value(row, "raw", rkey)
    return f"{fmt(p, kind)} / {fmt(r, kind)} ({suite.fmt_ratio(suite.ratio(p, r))})"


def markdown(doc):
    rows = doc["rows"]
    base = next((r for r in rows if r["engines"] == 4), None)
    done = [r["engines"] for r in rows if "skipped" not in r]
    largest = max(done) if done else None
    head = ["engines (ranks)"] + [m[1] for m in MEASURES] + ["2 MB all/one"] + [t[1] for t in TARGET_COLS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(MEASURES) + 1) + "---|" * len(TARGET_COLS)]
    for row in rows:
        label = f"{row['engines']} ({row['ranks']})"
        if "skipped" in row:
            lines.append(f"| {label} | skipped: {row['skipped'].splitlines()[0]} |")
            continue
        cells = [cell(row, m[2], m[3], m[4]) for m in MEASURES]
        tasks_ratio = suite.ratio(value(row, "pcluster", "tasks_per_s"), value(base, "pcluster", "tasks_per_s")
                                  if base else None)
        if tasks_ratio is not None and row is not base:
            cells[-1] += f" ({suite.fmt_ratio(tasks_ratio)} of 4)"
        cells.append(suite.fmt_ratio(all_to_one(row)))
        met = targets(row, base, largest)
        cells += ["—" if k not in met else "n/a" if met[k][2] is None else "yes" if met[k][2] else "no"
                  for k, _ in TARGET_COLS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    m = doc["meta"]
    lines += ["", f"{'quick run (smoke test, not a measurement)' if m.get('quick') else 'full run'} on "
              f"{m.get('host')} ({m.get('nproc')} CPUs), {m.get('mpi') or 'MPI n/a'}. Cells: pcluster / raw mpi4py on "
              "the same ranks (pcluster ÷ raw); medians of "
              f"{m['repeats']['small_repeats']} (small) and {m['repeats']['big_repeats']} (2 MB) timed runs; idle over "
              f"{m['idle_seconds']:g} s (CPU ticks: steps of {100 / m.get('clk_tck', 100) / m['idle_seconds']:.2f}%); "
              f"{m['tasks']:,} tasks. Target columns: yes / no / n/a (not measured) / — "
              "(no target at this N)."]
    if doc.get("error"):
        lines.append(f"- not finished: {doc['error'].splitlines()[0]}")
    for row in rows:
        for side in ("raw", "pcluster"):
            err = (row.get(side) or {}).get("error")
            bad = [f"{k}: {v['error']}" for k, v in ((row.get(side) or {}).get("results") or {}).items()
                   if isinstance(v, dict) and "error" in v]
            for e in ([err] if err else []) + bad:
                lines.append(f"- {row['engines']} engines, {side}: {e.splitlines()[0]}")
    return "\n".join(lines)


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        raise SystemExit("error: " + MPL_MSG.format(py=sys.executable, err=bl.error_text(exc))) from None
    return plt


def plot(doc, path):
    """One panel per measure (pcluster solid, raw mpi4py dashed, targets dotted) and one for the
    2 MB all/one ratio; x = engines on a log2 axis."""
    plt = pyplot()
    from matplotlib import ticker

    rows = [r for r in doc["rows"] if "skipped" not in r]
    xs = [r["engines"] for r in rows]
    base = next((value(r, "pcluster", "tasks_per_s") for r in rows if r["engines"] == 4), None)

    def getter(side, k):
        return lambda r: value(r, side, k)

    panels = [(key, label, kind, {"pcluster": getter("pcluster", pkey), "raw mpi4py": rkey and getter("raw", rkey)})
              for key, label, pkey, rkey, kind in MEASURES]
    panels.append(("all_one", "push 2 MB: to all ÷ to one", "ratio", {"pcluster": all_to_one}))
    lines = {
        "ready": [(5, "≤ 5 s (64 ranks)")] + ([(20, "≤ 20 s (256 ranks)")] if xs and max(xs) > 64 else []),
        "idle": [(1, "< 1% (4 engines)"), (5, "< 5% (64 ranks)")],
        "tasks": [(0.8 * base, "80% of 4 engines")] if base else [],
        "all_one": [(8, "≤ 8×")],
    }
    fig, axes = plt.subplots(3, 3, figsize=(16, 12))
    for ax, (key, label, kind, sides) in zip(axes.flat, panels):
        unit, scale, log = ("s", 1, False) if key == "ready" else {
            "time": ("ms", 1e3, True), "pct": ("% of one core", 1, False), "rate": ("tasks/s", 1, False),
            "ratio": ("×", 1, False)}[kind]
        for (side, get), style in zip(sides.items(), ("o-", "s--")):
            pts = [(r["engines"], get(r)) for r in rows] if get else []
            pts = [(x, y * scale) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=side)
        for (y, text), color in zip(lines.get(key, []), ("tab:red", "tab:purple")):
            ax.axhline(y, linestyle=":", color=color, label=f"target {text}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        else:
            ax.set_ylim(bottom=0)
            ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("engines")
        ax.set_ylabel(unit)
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    m = doc["meta"]
    fig.suptitle(f"pcluster scaling on {m.get('host')} ({m.get('nproc')} CPUs, mpirun --oversubscribe)"
                 + (": quick run, not a measurement" if m.get("quick") else ""))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- main
def engine_list(specs):
    ns = sorted({bl.positive_int(x) for s in specs for x in s.split(",") if x.strip()})
    if not ns:
        raise SystemExit("--engines: give at least one engine count")
    return ns


def parse():
    ap = bl.part_parser(__doc__, timeout=0, ready_timeout=60, ready_what="a job's ranks to start (+ 0.5 s per engine)")
    ap.add_argument("--engines", action="append", default=[], help="comma-separated engine counts (repeatable)")
    ap.add_argument("--plot", help="PNG to draw, e.g. docs/scaling.png")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"), help="holds bin/pcluster and python/")
    ap.add_argument("--idle-seconds", type=float, default=10, help="idle CPU window (quick: 3)")
    ap.add_argument("--idle-settle", type=float, default=2, help="wait after the last request before the window")
    ap.add_argument("--tasks", type=bl.positive_int, default=20_000, help="load-balanced tasks per timed run (quick: 3000)")
    ap.add_argument("--task-repeats", type=bl.positive_int, default=3, help="timed runs of the tasks (quick: 1)")
    ap.add_argument("--per-n-timeout", type=float, default=0, help="limit per job (0: 240 s + 4 s per engine)")
    ap.add_argument("--settle-limit", type=float, default=10, help="most seconds to wait for a quiet machine before a job")
    ap.add_argument("--shutdown-timeout", type=float, default=30)
    ap.add_argument("--replot", metavar="JSON", help="no jobs: table (and --plot) from an earlier --json")
    ap.add_argument("--raw-rank-program", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--started-file", help=argparse.SUPPRESS)
    bl.add_repeat_args(ap, small=200, small_warmup=20, big=20, big_warmup=3)
    if "--replot" in sys.argv:  # --json is not needed then
        ap.set_defaults(json=None)
        for a in ap._actions:
            a.required = False
    args = ap.parse_args()
    if args.quick:
        args.small_repeats, args.small_warmup, args.big_repeats, args.big_warmup = 30, 5, 5, 1
        args.idle_seconds, args.tasks, args.task_repeats, args.settle_limit = 3, 3000, 1, 3
    return args


JOBS = []  # every mpirun started: killed (if still running) on the way out


def main():
    args = parse()
    if args.raw_rank_program:
        return raw_rank_program(args)
    if args.plot:
        pyplot()  # fail now, not after the jobs
    if args.replot:
        with open(args.replot) as f:
            doc = json.load(f)
        print(markdown(doc))
        if args.plot:
            plot(doc, args.plot)
            bl.log(f"wrote {args.plot}")
        return 0
    ns = engine_list(args.engines or ["4,8,16,32,64"])
    total = args.timeout if args.timeout > 0 else sum(
        (args.per_n_timeout if args.per_n_timeout > 0 else 240 + 4 * n) * 2 + 2 * args.settle_limit for n in ns) + 60
    bl.install_deadline(total)
    limits = Limits(total)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:  # mpirun keeps a few pipes per local rank; 256 ranks need more than 1024
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    build = os.path.abspath(args.build_dir)
    exe = os.path.join(build, "bin", "pcluster")
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe} not found: build pcluster first (cmake --build build)")
    sys.path.insert(0, os.path.join(build, "python"))
    import cloudpickle
    import pcluster  # before any t0: ready time must not include the client's import

    cloudpickle.register_pickle_by_value(farm_bench)  # its task body reaches the engines by value
    doc = {
        "tool": "scale_bench",
        "meta": {"host": socket.gethostname(), "nproc": os.cpu_count(), "python": sys.executable,
                 "build_dir": build, "quick": args.quick, "engines": ns, "idle_seconds": args.idle_seconds,
                 "idle_settle": args.idle_settle, "tasks": args.tasks, "task_repeats": args.task_repeats,
                 "bytes_2MB": MB2, "overall_timeout_s": total, "clk_tck": os.sysconf("SC_CLK_TCK"),
                 "repeats": {k: getattr(args, k) for k in ("small_repeats", "small_warmup", "big_repeats", "big_warmup")}},
        "rows": [],
    }
    status = 0
    tmp = tempfile.mkdtemp(prefix="pcluster-scale-")
    try:
        for n in ns:
            bl.log(f"== {n} engines (mpirun -n {n + 1})")
            row = measure(args, n, tmp, limits, pcluster)
            doc["rows"].append(row)
            doc["meta"]["mpi"] = doc["meta"].get("mpi") or (row.get("raw") or {}).get("mpi")
            if "skipped" in row:
                bl.log(f"{n} engines skipped: {row['skipped']}")
            bl.write_json(args.json, doc)
    except BaseException as exc:  # noqa: B036 - Deadline and SIGTERM too: record, then clean up
        status = bl.record_failure(doc, "scale bench", exc)
    finally:
        bl.shield_cleanup()
        for proc in JOBS:
            bl.kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        bl.write_json(args.json, doc)
    print(markdown(doc))
    if args.plot:
        plot(doc, args.plot)
        bl.log(f"wrote {args.plot}")
    failed = any("error" in (r.get(s) or {}) for r in doc["rows"] for s in ("raw", "pcluster"))
    return status or int(failed)


if __name__ == "__main__":
    sys.exit(main())
