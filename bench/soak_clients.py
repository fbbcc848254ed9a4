"""Load: many clients at once, each a process of its own doing a mix of every operation with large
transfers among them (8 MiB pushes and pulls, scatter and gather of arrays, load-balanced maps);
some do not share /dev/shm with the job (every byte through the bridge). Every result is checked.

    /usr/bin/python3 bench/soak_clients.py          # 50 clients x 6 rounds (docs/reliability.md)
    /usr/bin/python3 bench/soak_clients.py --fast   # 8 clients x 2 rounds (CI)
"""

import subprocess
import sys
import time

import soak_lib as sl

WORKER = r"""
import hashlib, sys, numpy as np, pcluster
path, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rc = pcluster.Client(path, timeout=60)
rc.block = True  # the views below block (they start with the client's block, False by default)
dv = rc[:]
n = len(rc.ids)
ops = 0
name = f"v{me}"
for k in range(rounds):
    rng = np.random.default_rng(me * 1000 + k)
    dv.push({name: k})
    assert dv.pull(name) == [k] * n; ops += 2
    assert rc[me % n].apply_sync(lambda a, b: a * b, me, k) == me * k; ops += 1
    dv.execute(f"{name}_sq = {name} * {name}")
    assert dv.pull(f"{name}_sq") == [k * k] * n; ops += 2
    big = rng.integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    rc[k % n].push({f"{name}_big": big})
    back = rc[k % n].pull(f"{name}_big")
    assert hashlib.sha256(back).digest() == hashlib.sha256(big).digest(); ops += 2
    arr = rng.random(200_000)
    dv.scatter(f"{name}_arr", arr)
    assert np.array_equal(dv.gather(f"{name}_arr"), arr); ops += 2
    lv = rc.load_balanced_view()
    # (Names a function uses resolve on the engines, shared by every client: pass values as arguments.)
    assert lv.map_sync(lambda x, add=me: x + add, range(100)) == [x + me for x in range(100)]; ops += 1
    ars = [lv.apply_async(pow, i, 2) for i in range(50)]
    assert [a.get(120) for a in ars] == [i * i for i in range(50)]; ops += 50
    dv.execute(f"globals().pop('{name}_big', None); globals().pop('{name}_arr', None)")
rc.close()
print(f"WORKER OK {me} {ops} local={rc._conn.local}")
"""


def main():
    ap = sl.parser(__doc__)
    ap.add_argument("--clients", type=int, help="default 50; --fast 8")
    ap.add_argument("--rounds", type=int, help="per client; default 6; --fast 2")
    ap.add_argument("--engines", type=int, default=4)
    ap.add_argument("--remote-every", type=int, default=5, help="every n-th client does not share /dev/shm (root only)")
    args = ap.parse_args()
    pcluster = sl.setup(args)
    clients = args.clients or (8 if args.fast else 50)
    rounds = args.rounds or (2 if args.fast else 6)
    job = sl.Job(args.build_dir, args.engines)
    env = sl.env_for_jobs(args.build_dir)
    figures = {"clients": clients, "rounds": rounds, "engines": args.engines}
    ok = False
    try:
        base = (sl.rss_mib(job.controller_pid), sl.rss_mib(job.bridge_pid))
        procs = []
        t0 = time.monotonic()
        remote = 0
        for i in range(clients):
            argv = [sys.executable, "-c", WORKER, job.path, str(i), str(rounds)]
            if args.remote_every and i % args.remote_every == args.remote_every - 1 and sl.can_be_remote():
                argv = sl.remote_command(argv)
                remote += 1
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        peak = list(base)
        while any(p.poll() is None for p in procs):
            peak = [max(peak[0], sl.rss_mib(job.controller_pid)), max(peak[1], sl.rss_mib(job.bridge_pid))]
            if time.monotonic() - t0 > args.timeout - 60:
                for p in procs:
                    p.kill()
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        outs = [p.stdout.read() for p in procs]
        good = [o for o in outs if "WORKER OK" in o]
        ops = sum(int(o.split("WORKER OK")[1].split()[1]) for o in good)
        for o in outs:
            if "WORKER OK" not in o:
                print(o[-3000:], file=sys.stderr)
        figures.update(seconds=round(elapsed, 1), clients_ok=len(good), remote_clients=remote, operations=ops,
                       ops_per_s=round(ops / elapsed), controller_rss_mib=[round(base[0], 1), round(peak[0], 1)],
                       bridge_rss_mib=[round(base[1], 1), round(peak[1], 1)])
        ok = len(good) == clients and job.running()
    finally:
        job.stop(pcluster)
    return sl.finish("soak_clients", ok, figures, args)


if __name__ == "__main__":
    raise SystemExit(main())
