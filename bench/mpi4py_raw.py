"""Lower bounds for pcluster's data path: the same transfers as raw mpi4py collectives, rank 0 as root.

Run: mpirun -n 5 --oversubscribe /usr/bin/python3 bench/mpi4py_raw.py --json OUT.json [--quick]
Rank 0 plays pcluster's controller, ranks 1..N the engines. Times are taken on rank 0 and each one
ends when rank 0 knows every engine is done (a Barrier after one-to-all transfers), which is what
a blocking client call waits for. Buffers are allocated once and touched by the warm-up runs, so
these are best-case figures: no allocation, serialization or page faults in the timed runs.
Every section checks its data once afterwards; a failed check is reported as an error.
"""

import argparse
import os
import socket
import sys

import numpy as np
from mpi4py import MPI

import benchlib as bl

comm = MPI.COMM_WORLD


def timed(fn, repeats, warmup):
    """Run fn on every rank warmup+repeats times, each run starting together after a Barrier.

    Returns the summary of rank 0's wall times on rank 0, None elsewhere.
    """
    samples = []
    for i in range(warmup + repeats):
        comm.Barrier()
        t0 = MPI.Wtime()
        fn()
        dt = MPI.Wtime() - t0
        if i >= warmup:
            samples.append(dt)
    return bl.summarize(samples, warmup) if comm.rank == 0 else None


def all_true(flag):
    return comm.allreduce(bool(flag), op=MPI.LAND)


def pingpong(results, repeats, warmup):
    """8-byte round trip rank 0 -> 1 -> 0. The other engines wait in the closing Barrier; with
    --oversubscribe Open MPI makes them yield, as idle pcluster engines would."""
    ping = np.zeros(8, np.uint8)
    samples = []
    comm.Barrier()
    for i in range(warmup + repeats):
        if comm.rank == 0:
            t0 = MPI.Wtime()
            comm.Send(ping, dest=1, tag=7)
            comm.Recv(ping, source=1, tag=7)
            if i >= warmup:
                samples.append(MPI.Wtime() - t0)
        elif comm.rank == 1:
            comm.Recv(ping, source=0, tag=7)
            comm.Send(ping, dest=0, tag=7)
    comm.Barrier()
    if comm.rank == 0:
        results["pingpong_8B"] = bl.summarize(samples, warmup)
        results["pingpong_8B"]["samples_s"] = None  # thousands of samples: keep the JSON readable


def bcast(results, reps):
    """Bcast of 100 MiB from rank 0 to every engine (pcluster: push to all)."""
    buf = np.empty(bl.BIG_BYTES, np.uint8)
    if comm.rank == 0:
        buf[:] = np.random.default_rng(1).integers(0, 256, buf.size, dtype=np.uint8)

    def run():
        comm.Bcast(buf, root=0)
        comm.Barrier()

    results["bcast_100MiB"] = timed(run, *reps)
    digest = int(buf.sum(dtype=np.uint64))
    return all_true(digest == comm.bcast(digest, root=0))


def gatherv_big(results, reps, engines):
    """Gatherv of 100 MiB from each engine into rank 0, which sends 0 bytes (pcluster: pull from each)."""
    n = bl.BIG_BYTES
    counts, displs = [0] + [n] * engines, [0] + [n * i for i in range(engines)]
    if comm.rank == 0:
        send = np.empty(0, np.uint8)
        recv = np.empty(n * engines, np.uint8)
        recv_spec = [recv, (counts, displs), MPI.BYTE]
    else:
        send, recv_spec = np.full(n, comm.rank, np.uint8), None

    results["gatherv_100MiB"] = timed(lambda: comm.Gatherv([send, MPI.BYTE], recv_spec, root=0), *reps)
    ok = comm.rank != 0 or all((recv[n * i : n * (i + 1)] == i + 1).all() for i in range(engines))
    return all_true(ok)


def scatter_gather(results, reps, engines):
    """Scatterv of 80 MB from rank 0 (which keeps 0 bytes) and Gatherv back (pcluster: scatter / gather)."""
    part = bl.SCATTER_BYTES // engines
    counts, displs = [0] + [part] * engines, [0] + [part * i for i in range(engines)]
    if comm.rank == 0:
        whole = np.random.default_rng(2).integers(0, 256, part * engines, dtype=np.uint8)
        back = np.empty_like(whole)
        scatter_spec = [whole, (counts, displs), MPI.BYTE]
        gather_spec = [back, (counts, displs), MPI.BYTE]
        mine = np.empty(0, np.uint8)
    else:
        scatter_spec = gather_spec = None
        mine = np.empty(part, np.uint8)

    def scatterv():
        comm.Scatterv(scatter_spec, [mine, MPI.BYTE], root=0)
        comm.Barrier()

    results["scatterv_80MB"] = timed(scatterv, *reps)
    results["gatherv_80MB"] = timed(lambda: comm.Gatherv([mine, MPI.BYTE], gather_spec, root=0), *reps)
    return all_true(comm.rank != 0 or np.array_equal(whole, back))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="where rank 0 writes the results")
    ap.add_argument("--repeats", type=bl.positive_int, default=5, help="timed runs of each bulk transfer")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before those")
    ap.add_argument("--pingpong-repeats", type=bl.positive_int, default=2000, help="timed 8-byte round trips")
    ap.add_argument("--pingpong-warmup", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not a measurement")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.pingpong_repeats, args.pingpong_warmup = 2, 1, 200, 20
    if comm.size < 2:
        sys.exit("needs at least 2 ranks: rank 0 is the root, the others the engines")
    engines = comm.size - 1
    reps = (args.repeats, args.warmup)

    results = {}
    pingpong(results, args.pingpong_repeats, args.pingpong_warmup)
    checks = {
        "bcast_100MiB": bcast(results, reps),
        "gatherv_100MiB": gatherv_big(results, reps, engines),
        "scatterv_gatherv_80MB": scatter_gather(results, reps, engines),
    }
    if comm.rank != 0:
        return
    out = {
        "tool": "mpi4py",
        "meta": {
            "host": socket.gethostname(),
            "nproc": os.cpu_count(),
            "ranks": comm.size,
            "mpi": MPI.Get_library_version().strip("\x00 \n").splitlines()[0],
            "mpi4py": __import__("mpi4py").__version__,
            "repeats": {"bulk": args.repeats, "warmup": args.warmup, "pingpong": args.pingpong_repeats},
            "checks": checks,
        },
        "results": results,
    }
    if not all(checks.values()):
        out["error"] = f"data check failed: {checks}"
    if args.json:
        bl.write_json(args.json, out)
    for key, label in bl.RAW_OPS:
        print(f"{label:34s} median {results[key]['median_s'] * 1e3:9.3f} ms")
    if "error" in out:
        sys.exit(out["error"])


if __name__ == "__main__":
    main()
