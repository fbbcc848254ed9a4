"""Soak: a million load-balanced tasks through one client; the controller's and the bridge's
memory must not grow (< 20 MB after the warm-up), and every result must be right.

    /usr/bin/python3 bench/soak_tasks.py            # 1,000,000 tasks (docs/reliability.md)
    /usr/bin/python3 bench/soak_tasks.py --fast     # 60,000 tasks (CI)
"""

import time

import soak_lib as sl


def inc(x):
    return x + 1


def main():
    ap = sl.parser(__doc__)
    ap.add_argument("--tasks", type=int, help="how many (default 1,000,000; --fast 60,000)")
    ap.add_argument("--engines", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000, help="tasks submitted at a time (two batches in flight)")
    args = ap.parse_args()
    pcluster = sl.setup(args)
    total = args.tasks or (60_000 if args.fast else 1_000_000)
    warm = min(20_000, total // 3)
    job = sl.Job(args.build_dir, args.engines)
    figures = {"tasks": total, "engines": args.engines}
    ok = False
    try:
        rc = pcluster.Client(job.path, timeout=30)
        lv = rc.load_balanced_view()
        samples = []
        done = 0
        wrong = 0
        t0 = time.monotonic()
        base = None
        in_flight = []
        submitted = 0
        while done < total:
            while submitted < total and len(in_flight) < 2:
                n = min(args.batch, total - submitted)
                first = submitted
                in_flight.append((first, [lv.apply_async(inc, first + i) for i in range(n)]))
                submitted += n
            first, ars = in_flight.pop(0)
            for i, ar in enumerate(ars):
                if ar.get(300) != first + i + 1:
                    wrong += 1
            done += len(ars)
            if base is None and done >= warm:
                base = (sl.rss_mib(job.controller_pid), sl.rss_mib(job.bridge_pid), time.monotonic())
            if base is not None:
                samples.append((done, sl.rss_mib(job.controller_pid), sl.rss_mib(job.bridge_pid)))
        elapsed = time.monotonic() - t0
        rate = (total - warm) / max(1e-9, time.monotonic() - base[2])
        ctl_growth = max(s[1] for s in samples) - base[0]
        bridge_growth = max(s[2] for s in samples) - base[1]
        figures.update(
            seconds=round(elapsed, 1), tasks_per_s_after_warmup=round(rate),
            controller_rss_mib_after_warmup=round(base[0], 1), controller_rss_mib_end=round(samples[-1][1], 1),
            controller_growth_mib=round(ctl_growth, 1),
            bridge_rss_mib_after_warmup=round(base[1], 1), bridge_rss_mib_end=round(samples[-1][2], 1),
            bridge_growth_mib=round(bridge_growth, 1), wrong_results=wrong)
        ok = wrong == 0 and ctl_growth < 20 and bridge_growth < 20 and job.running()
        rc.close()
    finally:
        job.stop(pcluster)
    return sl.finish("soak_tasks", ok, figures, args)


if __name__ == "__main__":
    raise SystemExit(main())
