"""The pcluster benchmark in one command: runs every part and prints markdown tables.

Run from anywhere, with Debian's python (the parts need numpy, mpi4py, ipyparallel, dask):
    /usr/bin/python3 bench/run.py [--quick] [--farm-only | --no-farm] [--build-dir B] [--out docs/benchmarks.md]
Parts: the client operations (raw, ipyparallel, pcluster) and the task farm (farm-<peer> for
pcluster, ipyparallel, dask, mpi4py, and farm-scale-<N>: pcluster's one-by-one task rate at N
engines). Each part runs in its own process with a time limit; a part that fails shows as n/a and
its error is printed, the others are still reported. --out rewrites the section between the bench
markers; the farm tables sit in their own sub-section, so --farm-only (or --no-farm) rewrites only
its own tables and keeps the others.
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
FARM_BEGIN, FARM_END = "<!-- bench:farm:begin -->", "<!-- bench:farm:end -->"
CLIENT_PARTS = ("raw", "ipyparallel", "pcluster")
FARM_PEERS = (  # (peer, column title, part's own timeout in s)
    ("pcluster", "pcluster", 240),
    ("ipyparallel", "ipyparallel", 360),
    ("dask", "dask.distributed", 300),
    ("mpi4py", "mpi4py.futures", 240),
)
SCALE_ENGINES = (4, 8, 16, 32)
FARM_PARTS = tuple(f"farm-{p}" for p, _, _ in FARM_PEERS) + tuple(f"farm-scale-{n}" for n in SCALE_ENGINES)
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
    out = [
        ("raw", raw + quick, 120),
        ("ipyparallel", ipp + quick + ["--timeout", "240"], 240),
        ("pcluster", pcl + quick + ["--timeout", "240"], 240),
    ]
    farm = [PY, os.path.join(HERE, "farm_bench.py")]
    for peer, _, limit in FARM_PEERS:
        cmd = farm + ["--peer", peer, "--json", os.path.join(json_dir, f"farm-{peer}.json"), "--timeout", str(limit)]
        if peer == "pcluster":
            cmd += ["--build-dir", args.build_dir]
        if peer == "ipyparallel":
            cmd += ["--ready-timeout", "150"]  # ipcluster takes 10-30 s to come up on a busy machine
        out.append((f"farm-{peer}", cmd + quick, limit))
    for n in SCALE_ENGINES:
        limit = 120 + 4 * n  # start-up grows with the engines
        cmd = farm + [
            "--peer", "pcluster", "--engines", str(n), "--workloads", "apply", "--build-dir", args.build_dir,
            "--json", os.path.join(json_dir, f"farm-scale-{n}.json"), "--timeout", str(limit), "--ready-timeout", "120",
        ]
        out.append((f"farm-scale-{n}", cmd + quick, limit))
    return out


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


FARM_ROWS = (  # (workload key, label, target text, target check on pcluster's record)
    ("apply", "1. no-op tasks submitted one by one (`apply_async` / `submit`), all results back",
     "≥ 20,000 tasks/s", lambda r: r["rate_per_s"] >= 20_000),
    ("map", "2. map, chunks of 1,000 items (one task per chunk)",
     "≥ 1,000,000 items/s", lambda r: r["rate_per_s"] >= 1_000_000),
    ("sleep", "3. 10 ms tasks (`time.sleep(0.01)`) submitted one by one: efficiency",
     "≥ 95%", lambda r: r["efficiency"] >= 0.95),
)
SCALE_FLAT = 0.9  # "flat or rising": every engine count within 10% of the 4-engine rate, or above it


def farm_rec(res, part, key):
    """A farm part's record for one workload: the dict, {"error": ...}, or None when not run."""
    r = res.get(part)
    if r is None:
        return None
    rec = (r.get("results") or {}).get(key)
    if isinstance(rec, dict) and ("rate_per_s" in rec or "error" in rec):
        return rec
    return {"error": r.get("error") or "no result"}


def fmt_count(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x:,.0f}"


def farm_cell(key, rec):
    if rec is None:
        return "n/a"
    if "error" in rec:
        return "error"
    n = f"{rec['items']:,}"
    if key == "sleep":
        return f"{100 * rec['efficiency']:.1f}% ({n} in {fmt_time(rec['median_s'])})"
    unit = "items/s" if key == "map" else "tasks/s"
    return f"{fmt_count(rec['rate_per_s'])} {unit} (n={n})"


def farm_value(key, rec):
    if not rec or "error" in rec:
        return None
    return rec["efficiency"] if key == "sleep" else rec["rate_per_s"]


def farm_table(res):
    peers = FARM_PEERS[1:]
    rows = [
        "| workload, 4 workers | " + " | ".join(t for _, t, _ in FARM_PEERS) + " | "
        + " | ".join(f"pcluster/{t}" for _, t, _ in peers) + " | target (pcluster) | met? |",
        "|---|" + "---:|" * (len(FARM_PEERS) + len(peers)) + "---|---|",
    ]
    for key, label, target, check in FARM_ROWS:
        recs = {p: farm_rec(res, f"farm-{p}", key) for p, _, _ in FARM_PEERS}
        pcl = farm_value(key, recs["pcluster"])
        ratios = [fmt_ratio(ratio(pcl, farm_value(key, recs[p]))) for p, _, _ in peers]
        met = "n/a" if pcl is None else "yes" if check(recs["pcluster"]) else "no"
        rows.append(
            f"| {label} | " + " | ".join(farm_cell(key, recs[p]) for p, _, _ in FARM_PEERS) + " | "
            + " | ".join(ratios) + f" | {target} | {met} |"
        )
    return "\n".join(rows)


def scale_table(res):
    recs = {n: farm_rec(res, f"farm-scale-{n}", "apply") for n in SCALE_ENGINES}
    base = farm_value("apply", recs[SCALE_ENGINES[0]])
    rates = {n: farm_value("apply", recs[n]) for n in SCALE_ENGINES}
    ratios = {n: ratio(rates[n], base) for n in SCALE_ENGINES}
    known = [r for r in ratios.values() if r is not None]
    met = "n/a" if len(known) < len(SCALE_ENGINES) else "yes" if min(known) >= SCALE_FLAT else "no"
    items = next((r["items"] for r in recs.values() if r and "items" in r), None)
    label = f"pcluster, workload 1 ({items:,} tasks)" if items else "pcluster, workload 1"
    cols = " | ".join(f"{n} engines (`mpirun -n {n + 1}`)" for n in SCALE_ENGINES)

    def cell(n):
        r = recs[n]
        return "n/a" if r is None else "error" if "error" in r else f"{fmt_count(r['rate_per_s'])} tasks/s"

    return "\n".join([
        f"| {label} | {cols} | target | met? |",
        "|---|" + "---:|" * len(SCALE_ENGINES) + "---|---|",
        "| rate | " + " | ".join(cell(n) for n in SCALE_ENGINES) + " | flat or rising | |",
        "| ratio to 4 engines | " + " | ".join(fmt_ratio(ratios[n]) for n in SCALE_ENGINES)
        + f" | every ratio ≥ {SCALE_FLAT:.1f}× | {met} |",
    ])


def farm_section(res, errors, args, when, load, skip=()):
    """The farm tables with their notes, between the farm sub-markers (the scaling table only when
    some scaling part was not skipped)."""
    scaled = any(f"farm-scale-{n}" not in skip for n in SCALE_ENGINES)
    versions = []
    for part, key in (("farm-ipyparallel", "ipyparallel"), ("farm-dask", ""), ("farm-mpi4py", "")):
        v = ((res.get(part) or {}).get("meta") or {}).get("version")
        if v:
            versions.append(f"{key} {v}".strip())
    kind = "quick run (smoke test, not a measurement)" if args.quick else "full run"
    reps = []  # timed runs per workload, per peer that ran
    for p, title, _ in FARM_PEERS:
        runs = [farm_rec(res, f"farm-{p}", key) for key, _, _, _ in FARM_ROWS]
        if any(r and "n" in r for r in runs):
            reps.append(f"{title} " + "/".join(str(r["n"]) if r and "n" in r else "–" for r in runs))
    rep_text = ", ".join(reps)
    lines = [
        "### Task farm (load-balanced view)",
        "",
        f"Measured {when} on {platform.node()}: {machine()}; {', '.join(versions) or 'peer versions n/a'}; "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after; {kind}.",
        "",
        farm_table(res),
        "",
    ] + ([scale_table(res), ""] if scaled else []) + [
        "4 workers each: pcluster `mpirun -n 5 pcluster` through `rc.load_balanced_view()`; ipyparallel "
        "`ipcluster start -n 4` through its `load_balanced_view()`; dask.distributed "
        "`LocalCluster(n_workers=4, threads_per_worker=1, processes=True)` with `client.submit(..., pure=False)` "
        "+ `client.gather` (the map: `client.map` over 1,000-item chunks); mpi4py.futures "
        "`mpirun -n 5 python -m mpi4py.futures` with `MPIPoolExecutor` (`submit`, `map(chunksize=1000)`). "
        "The task bodies are the same functions for every peer (`echo(x)`, `x * x`, `time.sleep(0.01)`), "
        "and every run's results are checked in order; a wrong result shows as error. "
        "n = tasks (items for the map) per timed run: ipyparallel and dask.distributed get fewer "
        "one-by-one tasks because they run at hundreds to a few thousand per second; the rates per second "
        "compare. Rates are n / median time of "
        + (f"the timed runs (runs of workloads 1/2/3: {rep_text})" if rep_text else "the timed runs")
        + " after one small warm-up; efficiency = (n × 10 ms / 4 workers) / median time. "
        "pcluster runs with its defaults (output capture on). "
        "pcluster/peer = pcluster's rate (or efficiency) / the peer's: above 1× pcluster is faster."
        + (" The scaling table starts a fresh job per engine count (more engines than cores: "
           "`--oversubscribe`), workload 1 only; its 4-engine run is separate from the first table's."
           if scaled else ""),
    ]
    if errors:
        lines += ["", "Not measured:"] + [f"- {name}: {err.splitlines()[0]}" for name, err in errors.items()]
    return "\n".join(lines)


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

    /usr/bin/python3 bench/run.py --out docs/benchmarks.md   # full run, about 15 minutes
    /usr/bin/python3 bench/run.py --quick                      # smoke run, table on stdout only

`bench/run.py` runs these parts, each in its own process with a time limit, and tabulates medians:
- `bench/pcluster_bench.py`: `mpirun -n 5 --oversubscribe pcluster` (controller + 4 engines) driven
  through the Python client.
- `bench/ipyparallel_bench.py`: the same client calls against `ipcluster start -n 4` (ipyparallel).
- `bench/mpi4py_raw.py`: the same transfers as bare mpi4py collectives under `mpirun -n 5`, the floor
  for pcluster's data path.
- `bench/farm_bench.py`: the task farm (load-balanced view) against ipyparallel, dask.distributed
  and mpi4py.futures, 4 workers each, and pcluster at 4-32 engines (`run.py --farm-only` runs just these).

Machine when this file was created ({datetime.date.today()}): {machine()}.

The section between the markers below is rewritten by `bench/run.py --out`.
"""


def _split_farm(inner):
    """(client part, farm sub-section with its markers or None) of a bench section's text."""
    if FARM_BEGIN in inner and FARM_END in inner and inner.index(FARM_BEGIN) < inner.index(FARM_END):
        a, b = inner.index(FARM_BEGIN), inner.index(FARM_END) + len(FARM_END)
        return (inner[:a] + inner[b:]).strip("\n"), inner[a:b]
    return inner.strip("\n"), None


def write_out(path, body, farm_body=None):
    """Replace the marked section of path (creating the file, or appending the section, as needed).

    body / farm_body None: keep what the file has for that part (so --farm-only leaves the client
    tables as they are, and --no-farm the farm tables)."""
    text = open(path).read() if os.path.exists(path) else header() + "\n"
    has = BEGIN in text and END in text and text.index(BEGIN) < text.index(END)
    old_client, old_farm = _split_farm(text[text.index(BEGIN) + len(BEGIN): text.index(END)]) if has else ("", None)
    client = old_client if body is None else body
    farm = old_farm if farm_body is None else f"{FARM_BEGIN}\n{farm_body}\n{FARM_END}"
    inner = "\n\n".join(p for p in (client, farm) if p)
    block = f"{BEGIN}\n{inner}\n{END}"
    if has:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats / tasks: a smoke run, not a measurement")
    ap.add_argument("--out", help="markdown file whose bench section is rewritten, e.g. docs/benchmarks.md")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build"), help="pcluster build (bin/, python/)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--farm-only", action="store_true", help="run only the task-farm parts")
    only.add_argument("--no-farm", action="store_true", help="leave the task-farm parts out")
    ap.add_argument("--no-scale", action="store_true", help="leave the farm's engine-scaling parts out")
    ap.add_argument("--skip", action="append", default=[], choices=CLIENT_PARTS + FARM_PARTS,
                    help="leave a part out (repeatable)")
    ap.add_argument("--save-json", metavar="DIR", help="keep each part's JSON results in DIR")
    args = ap.parse_args()
    skip = set(args.skip)
    if args.farm_only:
        skip.update(CLIENT_PARTS)
    if args.no_farm:
        skip.update(FARM_PARTS)
    if args.no_scale:
        skip.update(p for p in FARM_PARTS if p.startswith("farm-scale-"))

    json_dir = tempfile.mkdtemp(prefix="pcluster-bench-run-")
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()[0]
    res, errors, skipped = {}, {}, {}  # errors: "part" or "part op" -> text
    try:
        for name, cmd, limit in parts(args, json_dir):
            res[name] = None
            if name in skip:
                skipped[name] = "skipped"
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
    load = (load_before, os.getloadavg()[0])

    for name, err in errors.items():
        bl.log(f"\n{name} FAILED: {err}")
    notes = {**skipped, **errors}
    ran_client = any(p not in skip for p in CLIENT_PARTS)
    ran_farm = any(p not in skip for p in FARM_PARTS)
    body = farm_body = None
    if ran_client:
        body = section(res, {k: v for k, v in notes.items() if not k.startswith("farm-")}, args, when)
        print(body)
    if ran_farm:
        farm_body = farm_section(res, {k: v for k, v in notes.items() if k.startswith("farm-")}, args, when, load, skip)
        print(("\n" if body else "") + farm_body)
    if args.out:
        write_out(args.out, body, farm_body)
        bl.log(f"wrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
