"""Fault: a client killed (SIGKILL) in the middle of sending 500 MB. The job and the other clients
must not notice: another client keeps working (every result checked) before, during and after;
the bridge gives back what the half-received request took; nothing of the dead client stays in
/dev/shm.

    /usr/bin/python3 bench/soak_kill.py             # 3 kills mid-transfer of 500 MB (docs/reliability.md)
    /usr/bin/python3 bench/soak_kill.py --fast      # 1 kill (CI)
The victim does not share /dev/shm with the job when this runs as root (its bytes then cross the
bridge, the path at risk); otherwise it is local (its shared-memory segment is what is at risk).
"""

import os
import subprocess
import sys
import threading
import time

import soak_lib as sl

VICTIM = r"""
import sys, pcluster
rc = pcluster.Client(sys.argv[1], timeout=30)
print("local" if rc._conn.local else "remote", flush=True)
rc[0].push({"victim": bytes(int(sys.argv[2]))}, block=True)
print("PUSHED", flush=True)
"""


def main():
    ap = sl.parser(__doc__)
    ap.add_argument("--kills", type=int, help="default 3; --fast 1")
    ap.add_argument("--mb", type=int, default=500, help="size of the transfer killed midway")
    args = ap.parse_args()
    pcluster = sl.setup(args)
    kills = args.kills or (1 if args.fast else 3)
    job = sl.Job(args.build_dir, 2)
    env = sl.env_for_jobs(args.build_dir)
    figures = {"kills": kills, "transfer_mb": args.mb}
    ok = False
    stop = threading.Event()
    errors, ops = [], [0]

    def bystander():
        """Another client, busy all along: pushes, pulls and applies, each result checked."""
        try:
            with pcluster.Client(job.path, timeout=30) as rc:
                k = 0
                while not stop.is_set():
                    k += 1
                    rc[1].push({"b": k}, block=True)
                    if rc[1].pull("b", block=True) != k or rc[:].apply_sync(lambda x: x * 2, k) != [2 * k] * len(rc.ids):
                        errors.append(f"wrong result at round {k}")
                    ops[0] += 3
        except Exception as e:  # noqa: BLE001 - reported as the soak's failure
            errors.append(repr(e))

    try:
        with pcluster.Client(job.path, timeout=30) as rc:
            rc[:].apply_sync(int, 0)
        base = sl.rss_mib(job.bridge_pid)
        t = threading.Thread(target=bystander, daemon=True)
        t.start()
        peaks, mids, where = [], [], None
        for _ in range(kills):
            argv = [sys.executable, "-c", VICTIM, job.path, str(args.mb * 1_000_000)]
            if sl.can_be_remote():
                argv = sl.remote_command(argv)
            victim = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
            where = victim.stdout.readline().strip()
            # Midway: the bridge is receiving (remote) or the segment is being filled (local).
            t0 = time.monotonic()
            peak = base
            while time.monotonic() - t0 < 20:
                peak = max(peak, sl.rss_mib(job.bridge_pid))
                if where == "local" or peak - base > args.mb / 4:
                    break
                time.sleep(0.005)
            if where == "local":
                time.sleep(0.15)
            victim.kill()
            victim.wait(10)
            peaks.append(round(peak - base))
            mids.append(victim.returncode)
            time.sleep(1.5)
        # What the dead clients held goes back (the bridge trims its heap once a client left).
        time.sleep(2)
        stop.set()
        t.join(60)
        after = sl.rss_mib(job.bridge_pid)
        with pcluster.Client(job.path, timeout=30) as rc:
            rc[0].push({"check": bytes(range(256)) * 4096}, block=True)
            intact = rc[0].pull("check", block=True) == bytes(range(256)) * 4096
        leftovers = [p for p in os.listdir("/dev/shm") if p.startswith("pcluster-c")
                     and not os.path.exists(f"/proc/{p.split('-')[1][1:].split('x')[0]}")]
        figures.update(victim=where, bridge_rss_mib_base=round(base, 1), bridge_growth_mib_midway=peaks,
                       bridge_growth_mib_after=round(after - base, 1), bystander_ops=ops[0], bystander_errors=errors,
                       job_running=job.running(), dead_clients_segments_left=leftovers, killed_exit_codes=mids)
        ok = (not errors and job.running() and intact and after - base < 20 and not leftovers and ops[0] > 0
              and all(c == -9 for c in mids))
    finally:
        stop.set()
        job.stop(pcluster)
    return sl.finish("soak_kill", ok, figures, args)


if __name__ == "__main__":
    raise SystemExit(main())
