"""ctest driver: start `mpirun -n N pcluster`, run a short client session, shut down.

usage: mpi_job_smoke.py N PCLUSTER_EXE PYTHON_DIR   (prints JOB OK on success)
N = 1 checks the refusal instead: a clear message and a non-zero exit.
"""

import os
import subprocess
import sys
import tempfile
import time

n, exe, pydir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.path.insert(0, pydir)
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONPATH=pydir + os.pathsep + os.environ.get("PYTHONPATH", ""))
mpirun = ["mpirun", "-n", str(n), "--oversubscribe", exe]

if n == 1:
    p = subprocess.run(mpirun, env=env, capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "at least 2 MPI ranks" in out, out
    print("JOB OK")
    sys.exit(0)

import pcluster  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    conn = os.path.join(tmp, "conn.json")
    job = subprocess.Popen(mpirun + ["--connection-file", conn], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        rc = pcluster.Client(conn, timeout=60)
        engines = n - 1
        assert rc.ids == list(range(engines)), rc.ids
        dv = rc[:]
        dv.push(dict(a=10), block=True)
        assert dv.pull("a", block=True) == [10] * engines
        assert dv.apply_sync(lambda x: x + a, 1) == [11] * engines  # noqa: F821 - a lives on the engines
        assert dv.map_sync(lambda x: x * x, range(10)) == [x * x for x in range(10)]
        assert rc[engines - 1].apply_sync(lambda: __import__("pcluster.engine").engine.engine_id) == engines - 1
        rc.shutdown()
        out, _ = job.communicate(timeout=30)
        assert job.returncode == 0, out
        assert not os.path.exists(conn), "connection file left behind"
        print(out)
        print("JOB OK")
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(10)
