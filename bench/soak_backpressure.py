"""Backpressure (issue 11, requirement 3): clients that send and never read must not grow the bridge
or the controller without bound, and what they held goes back when they leave.

  1. in flight: a raw client logs in and sends 1,500 requests of ~1 MiB (an execute of a 1 MiB
     comment, recorded from the build's own client) to an engine busy in a long cell, reading
     nothing. Bound: the bridge stops taking them (the client is paused) with bridge and controller
     growth under PCLUSTER_CLIENT_INFLIGHT_MIB + PCLUSTER_CLIENT_REPLY_BUFFER_MIB (256 + 64 by
     default); once it has left and the engine has drained, both within 20 MiB of where they began.
  2. replies: a raw client asks for 600 replies of 1 MB (execute "'r' * 1_000_000") and reads none,
     while another client does round trips on another engine; twice: the requests sent at once
     (a), and one every 5 ms (b, as tests/python/test_hardening.py does). Bound, both: bridge
     growth under PCLUSTER_CLIENT_REPLY_BUFFER_MIB + 48 MiB, within 20 MiB after it left; every
     round trip of the other client completes, none over 1 s.
Sending stops when the bridge passes --cap-mib (3 GiB; builds without budgets swell) and says so.

    /usr/bin/python3 bench/soak_backpressure.py                                 # this build
    /usr/bin/python3 bench/soak_backpressure.py --old-build /tmp/pcl-old/build  # before, then after: a table
    /usr/bin/python3 bench/soak_backpressure.py --fast                          # 300 requests, 150 replies, shorter waits
Each build runs in a process of its own (one Python imports one pcluster); the raw client speaks
the protocol its bridge announces (tests/python/rawwire.py).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import soak_lib as sl

sys.path.insert(0, os.path.join(sl.REPO, "tests", "python"))
from rawwire import PREFIX, T_EXECUTE, Raw, record_requests, with_id, with_string  # noqa: E402

INFLIGHT_MIB = float(os.environ.get("PCLUSTER_CLIENT_INFLIGHT_MIB", 256))  # the bridge's defaults
REPLY_MIB = float(os.environ.get("PCLUSTER_CLIENT_REPLY_BUFFER_MIB", 64))
BUSY = """
import os, time
t = time.monotonic()
while not os.path.exists({flag!r}) and time.monotonic() - t < {limit}:
    time.sleep(0.05)
"""


class Sampler(threading.Thread):
    """RSS of the bridge and the controller every 50 ms: peaks since mark(); over_cap once the bridge
    passes cap_mib."""

    def __init__(self, job, cap_mib):
        super().__init__(daemon=True)
        self.pids = (job.bridge_pid, job.controller_pid)
        self.cap_mib = cap_mib
        self.over_cap = threading.Event()
        self.done = threading.Event()
        self.mark()
        self.start()

    def now(self):
        return tuple(sl.rss_mib(p) for p in self.pids)

    def mark(self):
        self.peaks = self.now()

    def run(self):
        while not self.done.wait(0.05):
            cur = self.now()
            self.peaks = tuple(max(a, b) for a, b in zip(self.peaks, cur))
            if cur[0] > self.cap_mib:
                self.over_cap.set()


def send_unread(raw, template, count, sampler, stall_s, limit_s, pace=0):
    """Sends count copies of template with fresh ids as fast as the bridge takes them (or one every
    `pace` seconds), reading nothing.
    Stops when all are sent, when the bridge took nothing for stall_s (paused), after limit_s, or
    over the cap. Returns (requests sent whole, seconds, why it stopped)."""
    raw.s.setblocking(False)
    sent, pending = 0, b""
    t0 = last = time.monotonic()
    why = "all sent"
    while sent < count:
        now = time.monotonic()
        if sampler.over_cap.is_set():
            why = f"bridge over the {sampler.cap_mib:g} MiB cap"
            break
        if now - last > stall_s:
            why = f"paused (nothing taken for {stall_s:g} s)"
            break
        if now - t0 > limit_s:
            why = f"time limit ({limit_s:g} s)"
            break
        if not pending:
            pending = with_id(template, raw.next_id())
        try:
            n = raw.s.send(pending)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        last = time.monotonic()
        pending = pending[n:]
        sent += not pending
        if pace and not pending:
            time.sleep(pace)
            last = time.monotonic()
    return sent, round(last - t0, 1), why


def growth(now, base):
    return [round(a - b, 1) for a, b in zip(now, base)]


def settle(sampler, seconds):
    """The lowest RSS seen over `seconds` (heaps are trimmed a moment after a client leaves)."""
    low = sampler.now()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        low = tuple(min(a, b) for a, b in zip(low, sampler.now()))
    return low


def in_flight(pcluster, args, count):
    job = sl.Job(args.build_dir, 2)
    flag = os.path.join(job.dir, "stop-busy")
    sampler = None
    try:
        small = "#" + "m" * 1000
        recorded = record_requests(job.info, lambda c: c[0].execute(small, block=True))
        template = with_string([f for f in recorded if PREFIX.unpack_from(f)[2] == T_EXECUTE][0], small,
                               "#" + "m" * (1 << 20))
        sampler = Sampler(job, args.cap_mib)
        time.sleep(0.5)
        base = sampler.now()
        busy = pcluster.Client(job.path, timeout=30)
        cell = busy[0].execute(BUSY.format(flag=flag, limit=args.timeout), block=False)
        time.sleep(0.5)
        raw = Raw(job.info)
        sampler.mark()
        sent, seconds, why = send_unread(raw, template, count, sampler, args.stall, args.timeout / 3)
        raw.close()
        left = settle(sampler, 5)  # it has left; its requests already forwarded still wait for the busy engine
        open(flag, "w").close()
        cell.get(60)
        t = time.monotonic()
        busy[0].apply_sync(int, 1)  # engine 0 runs its queue in order: after this, nothing of the raw client waits
        drain_s = time.monotonic() - t
        drained = settle(sampler, 5)
        peak = sampler.peaks
        busy.close()
        return {"protocol_version": raw.version, "requests_asked": count, "request_bytes": len(template),
                "requests_sent": sent, "mib_sent": round(sent * len(template) / 2 ** 20), "send_seconds": seconds,
                "stopped": why, "rss_mib_base": [round(x, 1) for x in base],
                "growth_mib_peak": growth(peak, base), "growth_mib_after_leaving": growth(left, base),
                "growth_mib_after_drain": growth(drained, base), "drain_seconds": round(drain_s, 1),
                "job_running": job.running()}
    finally:
        if sampler:
            sampler.done.set()
        job.stop(pcluster)


def round_trips_for(rc, seconds):
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        if rc[1].apply_sync(int, 1) != 1:
            raise AssertionError("wrong result")
        out.append(time.perf_counter() - t)
    return out


def replies(pcluster, args, count, pace):
    job = sl.Job(args.build_dir, 2)
    sampler = None
    try:
        recorded = record_requests(job.info, lambda c: c[0].execute("'r' * 1_000_000", silent=False, block=True))
        template = [f for f in recorded if PREFIX.unpack_from(f)[2] == T_EXECUTE][0]
        rc = pcluster.Client(job.path, timeout=30)
        round_trips_for(rc, 1)
        quiet = round_trips_for(rc, 3)
        sampler = Sampler(job, args.cap_mib)
        base = sampler.now()
        raw = Raw(job.info)
        sampler.mark()
        sent, _, why = send_unread(raw, template, count, sampler, args.stall, args.timeout / 3, pace)
        meanwhile = round_trips_for(rc, args.window)
        raw.close()
        t = time.monotonic()
        rc[0].apply_sync(int, 1)  # engine 0 has answered whatever of the raw client's it had
        drain_s = time.monotonic() - t
        left = settle(sampler, 5)
        peak = sampler.peaks
        rc.close()
        return {"protocol_version": raw.version, "replies_asked": count, "seconds_between_requests": pace, "requests_sent": sent, "stopped": why,
                "rss_mib_base": [round(x, 1) for x in base], "growth_mib_peak": growth(peak, base),
                "growth_mib_after_leaving": growth(left, base), "drain_seconds": round(drain_s, 1),
                "other_client_round_trip_us_quiet": round(statistics.median(quiet) * 1e6),
                "other_client_round_trip_us_meanwhile": round(statistics.median(meanwhile) * 1e6),
                "other_client_round_trip_ms_max_meanwhile": round(max(meanwhile) * 1e3, 1),
                "other_client_round_trips_meanwhile": len(meanwhile), "job_running": job.running()}
    finally:
        if sampler:
            sampler.done.set()
        job.stop(pcluster)


def judge(f):
    """The bounds of the module's docstring; figures are [bridge, controller]."""
    a = f["in_flight"]
    budget = INFLIGHT_MIB + REPLY_MIB
    ok = (a["stopped"].startswith("paused") and a["growth_mib_peak"][0] < budget and a["growth_mib_peak"][1] < budget
          and max(a["growth_mib_after_drain"]) < 20 and a["job_running"])
    for b in (f["replies"], f["replies_paced"]):
        ok = ok and (b["growth_mib_peak"][0] < REPLY_MIB + 48 and b["growth_mib_after_leaving"][0] < 20
                     and b["other_client_round_trip_ms_max_meanwhile"] < 1000 and b["job_running"])
    return ok


def one_build(args):
    pcluster = sl.setup(args)
    requests, asked = (300, 150) if args.fast else (args.requests, args.replies)
    figures = {"build_dir": os.path.abspath(args.build_dir), "cap_mib": args.cap_mib,
               "budgets_mib": {"inflight": INFLIGHT_MIB, "reply_buffer": REPLY_MIB}}
    figures["in_flight"] = in_flight(pcluster, args, requests)
    figures["replies"] = replies(pcluster, args, asked, 0)
    figures["replies_paced"] = replies(pcluster, args, asked, 0.005)
    return sl.finish("soak_backpressure", judge(figures), figures, args)


def table(before, after):
    rows = [
        ("1. requests taken (of asked)", lambda f: f"{f['in_flight']['requests_sent']} of {f['in_flight']['requests_asked']}"),
        ("1. sending stopped", lambda f: f["in_flight"]["stopped"]),
        ("1. bridge / controller RSS at start (MiB)", lambda f: "{} / {}".format(*f["in_flight"]["rss_mib_base"])),
        ("1. bridge / controller growth, peak (MiB)", lambda f: "{} / {}".format(*f["in_flight"]["growth_mib_peak"])),
        ("1. held 5 s after it left, engine busy (MiB)", lambda f: "{} / {}".format(*f["in_flight"]["growth_mib_after_leaving"])),
        ("1. held after the engine drained (MiB)", lambda f: "{} / {}".format(*f["in_flight"]["growth_mib_after_drain"])),
        ("2a. at once: bridge growth, peak (MiB)", lambda f: str(f["replies"]["growth_mib_peak"][0])),
        ("2b. 5 ms apart: bridge growth, peak (MiB)", lambda f: str(f["replies_paced"]["growth_mib_peak"][0])),
        ("2a / 2b. bridge held after it left (MiB)", lambda f: "{} / {}".format(
            f["replies"]["growth_mib_after_leaving"][0], f["replies_paced"]["growth_mib_after_leaving"][0])),
        ("2a. other client's round trip, quiet / meanwhile (us)",
         lambda f: f"{f['replies']['other_client_round_trip_us_quiet']} / {f['replies']['other_client_round_trip_us_meanwhile']}"),
        ("2a / 2b. other client's slowest round trip meanwhile (ms)", lambda f: "{} / {}".format(
            f["replies"]["other_client_round_trip_ms_max_meanwhile"], f["replies_paced"]["other_client_round_trip_ms_max_meanwhile"])),
        ("within the bounds", lambda f: "yes" if f["ok"] else "no"),
    ]

    def cell(f, get):
        if f is None:
            return "(did not finish)"
        try:
            return get(f)
        except (KeyError, IndexError, TypeError):
            return "-"

    out = ["| | before | after |", "| --- | --- | --- |"]
    out += [f"| {name} | {cell(before, get)} | {cell(after, get)} |" for name, get in rows]
    return "\n".join(out)


def both(args):
    """Runs this script on --old-build, then on --build-dir, each in a process of its own."""
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name, build in (("before", args.old_build), ("after", args.build_dir)):
            out = os.path.join(d, name + ".json")
            argv = [sys.executable, os.path.abspath(__file__), "--build-dir", build, "--json", out,
                    "--timeout", str(args.timeout), "--cap-mib", str(args.cap_mib), "--stall", str(args.stall),
                    "--window", str(args.window), "--requests", str(args.requests), "--replies", str(args.replies)]
            if args.fast:
                argv.append("--fast")
            print(f"== {name}: {build}", flush=True)
            env = sl.env_for_jobs(build)
            r = subprocess.run(argv, env=env, timeout=args.timeout + 120)
            results[name] = json.load(open(out)) if os.path.exists(out) else None
            if results[name] is None:
                print(f"{name}: the run on {build} ended with {r.returncode} and no figures", file=sys.stderr)
    print(table(results["before"], results["after"]))
    ok = results["after"] is not None and results["after"]["ok"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results, ok=ok), f, indent=2, sort_keys=True)
    print(f"soak_backpressure: {'SOAK OK' if ok else 'SOAK FAILED'} (the bounds apply to the after build)")
    return 0 if ok else 1


def main():
    ap = sl.parser(__doc__)
    ap.add_argument("--old-build", help="a build to run first (before), then --build-dir (after): a table")
    ap.add_argument("--requests", type=int, default=1500, help="~1 MiB requests sent to a busy engine")
    ap.add_argument("--replies", type=int, default=600, help="1 MB replies asked for and not read")
    ap.add_argument("--cap-mib", type=float, default=3072, help="stop sending when the bridge passes this")
    ap.add_argument("--stall", type=float, help="seconds the bridge takes nothing: the client is paused (8; --fast 4)")
    ap.add_argument("--window", type=float, help="seconds of the other client's round trips (15; --fast 5)")
    ap.set_defaults(timeout=600)
    args = ap.parse_args()
    args.stall = args.stall or (4 if args.fast else 8)
    args.window = args.window or (5 if args.fast else 15)
    return both(args) if args.old_build else one_build(args)


if __name__ == "__main__":
    raise SystemExit(main())
