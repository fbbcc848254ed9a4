"""The pcluster benchmark in one command: runs the three parts and prints a markdown table.

Run from anywhere, with Debian's python (the parts need numpy, mpi4py, ipyparallel):
    /usr/bin/python3 bench/run.py [--quick] [--out docs/benchmarks.md]
Each part runs in its own process with a time limit; a part that fails shows as n/a and its error is
printed, the others are still reported. --out rewrites the section between the bench markers.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

import benchlib as bl

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The parts import numpy/mpi4py/ipyparallel, which only Debian's python has here.
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
GRACE_S = 90  # beyond a part's own --timeout: time for its cleanup (ipcluster stop takes ~10 s)

# Which raw mpi4py figure each client operation is compared with; latency rows get the 8-byte MPI
# round trip as a floor for reference only (their targets are absolute).
RAW_FOR = {
    "apply_one": "pingpong_8B",
    "push_small": "pingpong_8B",
    "pull_small": "pingpong_8B",
    "execute_all": "pingpong_8B",
    "push_100MiB": "bcast_100MiB",
    "pull_100MiB": "gatherv_100MiB",
    "scatter_80MB": "scatterv_80MB",
    "gather_80MB": "gatherv_80MB",
}
# (kind, value, text): "abs" = pcluster median <= value seconds; "raw" = pcluster/raw <= value.
TARGETS = {
    "apply_one": ("abs", 150e-6, "≤ 150 µs"),
    "push_small": ("abs", 200e-6, "≤ 200 µs"),
    "pull_small": ("abs", 200e-6, "≤ 200 µs"),
    "execute_all": ("abs", 200e-6, "≤ 200 µs"),
    "push_100MiB": ("raw", 5, "≤ 5× raw Bcast"),
    "pull_100MiB": ("raw", 4, "≤ 4× raw Gather"),
    "scatter_80MB": ("raw", 5, "≤ 5× raw Scatterv"),
    "gather_80MB": ("raw", 5, "≤ 5× raw Gatherv"),
    "start_ready": ("abs", 2.0, "≤ 2 s"),
}


def parts(args, json_dir):
    """(name, command, env, own timeout) of each part; the outer limit adds GRACE_S."""
    quick = ["--quick"] if args.quick else []
    raw = [
        "mpirun", "-n", str(bl.N_ENGINES + 1), "--oversubscribe", PY, os.path.join(HERE, "mpi4py_raw.py"),
        "--json", os.path.join(json_dir, "raw.json"),
    ]
    ipp = [PY, os.path.join(HERE, "ipyparallel_bench.py"), "--json", os.path.join(json_dir, "ipyparallel.json")]
    pcl = [
        PY, os.path.join(HERE, "pcluster_bench.py"), "--json", os.path.join(json_dir, "pcluster.json"),
        "--build-dir", args.build_dir,
    ]
    return [
        ("raw", raw + quick, 120),
        ("ipyparallel", ipp + quick + ["--timeout", "240"], 240),
        ("pcluster", pcl + quick + ["--timeout", "240"], 240),
    ]


def run_part(name, cmd, limit, json_path, log_dir):
    """Run one part; returns (its JSON or None, error text or None).

    On overrunning limit + GRACE_S: SIGTERM (the part's `finally` stops its cluster), then SIGKILL to
    whatever is left of its process tree.
    """
    stdout_path = os.path.join(log_dir, f"{name}.out")
    bl.log(f"== {name}: {' '.join(cmd)}")
    error = None
    with open(stdout_path, "w") as logf:
        proc = subprocess.Popen(cmd, env=bl.base_env(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=limit + GRACE_S)
        except subprocess.TimeoutExpired:
            error = f"killed after {limit + GRACE_S} s"
            bl.kill_tree(proc, grace=30)
    result = None
    try:
        with open(json_path) as f:
            result = json.load(f)
    except (OSError, ValueError) as exc:
        error = error or f"no results ({bl.error_text(exc)})"
    if result and result.get("error"):
        error = result["error"]
    if error is None and proc.returncode != 0:
        error = f"exited with {proc.returncode}"
    if error:
        error += f"\n--- {name} output (tail) ---\n{bl.tail(stdout_path, 3000)}"
    return result, error


def median(result, key):
    """Median in seconds of one operation, or None when missing or failed."""
    rec = (result or {}).get("results", {}).get(key)
    return rec.get("median_s") if isinstance(rec, dict) else None


def fmt_time(s):
    if s is None:
        return "n/a"
    v, unit = (s * 1e6, "µs") if s < 1e-3 else (s * 1e3, "ms") if s < 1 else (s, "s")
    return f"{v:.{2 if v < 10 else 1 if v < 100 else 0}f} {unit}"


def fmt_ratio(r):
    if r is None:
        return "n/a"
    return f"{r:.{2 if r < 10 else 1 if r < 100 else 0}f}×"


def ratio(a, b):
    return a / b if a is not None and b else None


def table(res):
    rows = [
        "| operation | pcluster | ipyparallel | raw mpi4py | pcluster/ipyparallel speedup | pcluster/raw ratio | target | met? |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, label in bl.CLIENT_OPS:
        pcl, ipp = median(res["pcluster"], key), median(res["ipyparallel"], key)
        raw = median(res["raw"], RAW_FOR[key]) if key in RAW_FOR else None
        kind, limit, text = TARGETS[key]
        measured = pcl if kind == "abs" else ratio(pcl, raw)
        met = "n/a" if measured is None else "yes" if measured <= limit else "no"
        rows.append(
            f"| {label} | {fmt_time(pcl)} | {fmt_time(ipp)} | {fmt_time(raw) if key in RAW_FOR else '—'} "
            f"| {fmt_ratio(ratio(ipp, pcl))} | {fmt_ratio(ratio(pcl, raw)) if key in RAW_FOR else '—'} | {text} | {met} |"
        )
    return "\n".join(rows)


def throughput_table(res):
    """Non-blocking submission rate: pcluster with and without output capture, ipyparallel."""
    def rec(name, key):
        r = ((res.get(name) or {}).get("results") or {}).get(key)
        return r if isinstance(r, dict) and "rate_per_s" in r else None

    on, off, ipp = rec("pcluster", "apply_burst"), rec("pcluster", "apply_burst_nocapture"), rec("ipyparallel", "apply_burst")

    def rate(r):
        return f"{r['rate_per_s']:,.0f}/s ({r['n']:,} in {fmt_time(r['median_s'])})" if r else "n/a"

    speed = fmt_ratio(ratio(on["rate_per_s"], ipp["rate_per_s"])) if on and ipp else "n/a"
    cost = f"{100 * (1 - on['rate_per_s'] / off['rate_per_s']):+.1f}%" if on and off else "n/a"
    met = "n/a" if not on else "yes" if on["rate_per_s"] >= 20000 else "no"
    return "\n".join([
        "| non-blocking applies, all results back (4 engines) | pcluster, output captured | pcluster, capture off | ipyparallel | speedup | capture cost | target | met? |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        f"| round robin over single-engine views | {rate(on)} | {rate(off)} | {rate(ipp)} | {speed} | {cost} "
        f"| ≥ 20,000/s, capture ≤ 10% | {met} |",
    ])


def machine():
    """One line of machine facts: CPU count and model, memory, OS."""
    model = mem = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            kib = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
            mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        with open("/etc/os-release") as f:
            osname = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M).group(1)
    except (OSError, AttributeError):
        osname = platform.platform()
    return f"{os.cpu_count()} CPUs ({model}), {mem} RAM, {osname}"


def section(res, errors, args, when):
    raw_meta = (res["raw"] or {}).get("meta", {})
    ipp_meta = (res["ipyparallel"] or {}).get("meta", {})
    versions = ", ".join(
        v for v in (raw_meta.get("mpi", "").split(",")[0], f"mpi4py {raw_meta['mpi4py']}" if "mpi4py" in raw_meta else "",
                    f"ipyparallel {ipp_meta['version']}" if "version" in ipp_meta else "") if v
    )
    reps = next((r["meta"]["repeats"] for r in (res["pcluster"], res["ipyparallel"]) if r and "repeats" in r.get("meta", {})), {})
    kind = "quick run (smoke test, not a measurement)" if args.quick else "full run"
    lines = [
        f"Measured {when} on {platform.node()}: {machine()}; {versions}; {kind}.",
        "",
        table(res),
        "",
        throughput_table(res),
        "",
        "Medians of "
        + (f"{reps['small_repeats']} (latency rows) and {reps['big_repeats']} (bulk rows) timed runs" if reps else "several runs")
        + " after warm-ups; start to all engines ready is a single run. speedup = ipyparallel time / pcluster time; "
        "ratio = pcluster time / raw mpi4py time. The raw column of the latency rows is an 8-byte MPI round "
        "trip rank 0 → 1 → 0, a floor for reference (those targets are absolute). Bulk rows compare with "
        "Bcast / Gatherv / Scatterv / Gatherv between preallocated buffers, rank 0 as root.",
    ]
    if errors:
        lines += ["", "Not measured:"] + [f"- {name}: {err.splitlines()[0]}" for name, err in errors.items()]
    return "\n".join(lines)


def header():
    return f"""# pcluster benchmarks

How to run, from the repository root after building pcluster into `build/`:

    /usr/bin/python3 bench/run.py --out docs/benchmarks.md   # full run, a few minutes
    /usr/bin/python3 bench/run.py --quick                      # smoke run, table on stdout only

`bench/run.py` runs three parts, each in its own process with a time limit, and tabulates medians:
- `bench/pcluster_bench.py`: `mpirun -n 5 --oversubscribe pcluster` (controller + 4 engines) driven
  through the Python client.
- `bench/ipyparallel_bench.py`: the same client calls against `ipcluster start -n 4` (ipyparallel).
- `bench/mpi4py_raw.py`: the same transfers as bare mpi4py collectives under `mpirun -n 5`, the floor
  for pcluster's data path.

Machine when this file was created ({datetime.date.today()}): {machine()}.

The section between the markers below is rewritten by `bench/run.py --out`.
"""


def write_out(path, body):
    """Replace the marked section of path (creating the file, or appending the section, as needed)."""
    block = f"{BEGIN}\n{body}\n{END}"
    text = open(path).read() if os.path.exists(path) else header() + "\n"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not a measurement")
    ap.add_argument("--out", help="markdown file whose bench section is rewritten, e.g. docs/benchmarks.md")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"), help="pcluster build (bin/, python/)")
    ap.add_argument("--skip", action="append", default=[], choices=["raw", "ipyparallel", "pcluster"],
                    help="leave a part out (repeatable)")
    ap.add_argument("--save-json", metavar="DIR", help="keep each part's JSON results in DIR")
    args = ap.parse_args()

    json_dir = tempfile.mkdtemp(prefix="pcluster-bench-run-")
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    res, errors, skipped = {}, {}, {}  # errors: "part" or "part op" -> text
    try:
        for name, cmd, limit in parts(args, json_dir):
            res[name] = None
            if name in args.skip:
                skipped[name] = "skipped (--skip)"
                continue
            json_path = cmd[cmd.index("--json") + 1]
            res[name], err = run_part(name, cmd, limit, json_path, json_dir)
            if err:
                errors[name] = err
            for op, rec in ((res[name] or {}).get("results") or {}).items():
                if isinstance(rec, dict) and "error" in rec:
                    errors[f"{name} {op}"] = rec["error"]
            for w in (res[name] or {}).get("warnings", []):
                bl.log(f"{name}: warning: {w}")
        if args.save_json:
            os.makedirs(args.save_json, exist_ok=True)
            for f in os.listdir(json_dir):
                if f.endswith(".json"):
                    shutil.copy(os.path.join(json_dir, f), args.save_json)
    finally:
        shutil.rmtree(json_dir, ignore_errors=True)

    for name, err in errors.items():
        bl.log(f"\n{name} FAILED: {err}")
    body = section(res, {**skipped, **errors}, args, when)
    print(body)
    if args.out:
        write_out(args.out, body)
        bl.log(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
