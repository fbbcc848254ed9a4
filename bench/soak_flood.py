"""Attack: thousands of idle connections that never log in, plus a flood of logins with a wrong
key from another process; a well-behaved client's round trip must stay within 2x of what it is
on a quiet job, and mpirun's terminal must stay quiet.

    /usr/bin/python3 bench/soak_flood.py            # 2,000 idle sockets, 30 s of flood (docs/reliability.md)
    /usr/bin/python3 bench/soak_flood.py --fast     # 500 idle sockets, 8 s of flood (CI)
"""

import hashlib
import hmac
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time

import soak_lib as sl

FLOOD = r"""
import hashlib, hmac, json, os, socket, struct, sys, threading, time
info = json.load(open(sys.argv[1])); seconds = float(sys.argv[2]); threads = int(sys.argv[3])
wrong = bytes.fromhex(("0" if info["key"][0] != "0" else "1") + info["key"][1:])
P = struct.Struct("<IHHIIQ")
count = [0, 0]
stop = time.monotonic() + seconds
def one():
    s = socket.create_connection((info["ip"], info["port"]), timeout=10)
    try:
        pre = s.recv(24, socket.MSG_WAITALL)
        if len(pre) < 24: return
        version = P.unpack(pre)[1]  # speak the bridge's own version: a wrong key, not a wrong version
        body = s.recv(P.unpack(pre)[5], socket.MSG_WAITALL)
        nonce = body[1:33]
        mac = hmac.new(wrong, b"pcluster-client" + nonce, hashlib.sha256).digest()
        meta = b"\x01" + mac + os.urandom(32) + struct.pack("<Q", 0) + bytes(32)
        s.sendall(P.pack(0x314C4350, version, 2, len(meta), 0, len(meta)) + meta)
        s.recv(1 << 16)
        count[1] += 1
    finally:
        s.close()
def loop():
    while time.monotonic() < stop:
        try:
            one()
        except OSError:
            pass
        count[0] += 1
ts = [threading.Thread(target=loop) for _ in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"attempts": count[0], "refused": count[1]}))
"""


def round_trips(rc, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        rc[0].apply_sync(int, 1)
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = sl.parser(__doc__)
    ap.add_argument("--idle", type=int, help="idle unauthenticated sockets (default 2000; --fast 500)")
    ap.add_argument("--seconds", type=float, help="of flood (default 30; --fast 8)")
    ap.add_argument("--threads", type=int, default=16, help="flooding threads")
    args = ap.parse_args()
    pcluster = sl.setup(args)
    idle = args.idle or (500 if args.fast else 2000)
    seconds = args.seconds or (8 if args.fast else 30)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, idle + 1024)), hard))
    job = sl.Job(args.build_dir, 2)
    figures = {"idle_sockets": idle, "flood_seconds": seconds, "flood_threads": args.threads}
    ok = False
    socks = []
    try:
        info = job.info
        rc = pcluster.Client(job.path, timeout=30)
        round_trips(rc, 200)  # warm-up
        quiet = statistics.median(round_trips(rc, 1000))
        lines_before = len(job.log_text().splitlines())
        base_rss = sl.rss_mib(job.bridge_pid)
        for _ in range(idle):
            s = socket.create_connection((info["ip"], info["port"]), timeout=10)
            socks.append(s)
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, job.path, str(seconds), str(args.threads)],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        under, peak_rss = [], base_rss
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds - 2:
            under += round_trips(rc, 100)
            peak_rss = max(peak_rss, sl.rss_mib(job.bridge_pid))
        attack = json.loads(flood.communicate(timeout=seconds + 120)[0])
        under_median = statistics.median(under)
        # The job's terminal: bridge lines during the attack (counted ones included).
        lines = job.log_text().splitlines()[lines_before:]
        dropped_idle = 0
        for s in socks:
            s.settimeout(0)
            try:
                while s.recv(1 << 16):
                    pass
                dropped_idle += 1
            except BlockingIOError:
                pass
            except OSError:
                dropped_idle += 1
        figures.update(round_trip_quiet_us=round(quiet * 1e6), round_trip_under_attack_us=round(under_median * 1e6),
                       ratio=round(under_median / quiet, 2), wrong_key_attempts=attack["attempts"],
                       refusals_received=attack["refused"], idle_sockets_dropped_by_bridge=dropped_idle,
                       bridge_rss_mib=[round(base_rss, 1), round(peak_rss, 1)], job_log_lines=len(lines))
        ok = under_median <= 2 * quiet and len(lines) <= 40 and job.running() and peak_rss - base_rss < 64
        if len(lines) > 40:
            print("\n".join(lines[:60]), file=sys.stderr)
        rc.close()
    finally:
        for s in socks:
            s.close()
        job.stop(pcluster)
    return sl.finish("soak_flood", ok, figures, args)


if __name__ == "__main__":
    raise SystemExit(main())
