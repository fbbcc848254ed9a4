"""Runs tsan_client (the client core built with ThreadSanitizer) against a real job.

    tsan_client_test.py TSAN_CLIENT PCLUSTER_EXE PYTHON_BUILD_DIR
Starts `mpirun -n 3 pcluster`, runs the client, shuts the job down; prints TSAN TEST OK when the
client finished every request and ThreadSanitizer reported nothing."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def main():
    tsan_client, pcluster_exe, pybuild = sys.argv[1:4]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [pybuild, env.get("PYTHONPATH", "")] if p)
    d = tempfile.mkdtemp(prefix="pcluster-tsan-")
    path = os.path.join(d, "conn.json")
    cmd = [shutil.which("mpirun"), "-n", "3", "--oversubscribe", "--enable-recovery", pcluster_exe,
           "--connection-file", path]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if job.poll() is not None or time.monotonic() > deadline:
                print(job.stdout.read().decode(errors="replace"))
                print("the job did not start")
                return 1
            time.sleep(0.1)
        time.sleep(0.2)
        tenv = dict(env, TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1")
        r = subprocess.run([tsan_client, path], env=tenv, capture_output=True, text=True, timeout=400)
        print(r.stdout)
        print(r.stderr[-20000:])
        if r.returncode != 0 or "WARNING: ThreadSanitizer" in r.stderr:
            print(f"tsan_client failed (exit {r.returncode})")
            return 1
        sys.path.insert(0, pybuild)
        import pcluster

        with pcluster.Client(path, timeout=10) as c:
            c.shutdown(timeout=30)
        job.wait(60)
        print("TSAN TEST OK")
        return 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
