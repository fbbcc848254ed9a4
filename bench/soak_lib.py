"""Shared pieces of the soak and load scripts (bench/soak_*.py, docs/reliability.md): a job of
their own, its processes' memory, clients that do not share /dev/shm, the pass/fail line.

Every script is bounded in count and time and stops by itself; --fast is the variant CI runs
(tests/python/test_hardening.py), the default is the full run documented in docs/reliability.md.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parser(doc):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="the short variant (CI)")
    ap.add_argument("--build-dir", default=os.environ.get("PCLUSTER_BUILD_DIR", os.path.join(REPO, "build")),
                    help="holds bin/pcluster and python/")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    return ap


def setup(args):
    """Makes the build's pcluster importable and the deadline an exception; returns the module."""
    sys.path.insert(0, os.path.join(args.build_dir, "python"))
    os.environ["PATH"] = os.path.join(args.build_dir, "bin") + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")

    def on_alarm(signum, frame):
        raise TimeoutError(f"the soak exceeded its --timeout of {args.timeout:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit("terminated"))
    signal.alarm(int(args.timeout))
    import pcluster

    return pcluster


def env_for_jobs(build_dir, extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.join(build_dir, "python"), env.get("PYTHONPATH", "")] if p)
    env.pop("PCLUSTER_CONNECTION_FILE", None)
    if extra:
        env.update(extra)
    return env


class Job:
    """`mpirun -n engines+1 pcluster` in a session of its own, its connection file in a fresh
    directory; stop() shuts it down (or kills it)."""

    def __init__(self, build_dir, engines=4, env=None, args=()):
        self.dir = tempfile.mkdtemp(prefix="pcluster-soak-")
        self.path = os.path.join(self.dir, "conn.json")
        self.log = os.path.join(self.dir, "job.log")
        exe = os.path.join(build_dir, "bin", "pcluster")
        cmd = ["mpirun", "--enable-recovery", "--oversubscribe", "-n", str(engines + 1), exe,
               "--connection-file", self.path, *args]
        self.build_dir = build_dir
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, env=env_for_jobs(build_dir, env), stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with open(self.path) as f:
                    self.info = json.load(f)
                break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the job did not start:\n{self.log_text()}")
            time.sleep(0.05)

    @property
    def bridge_pid(self):
        return self.info["bridge_pid"]

    @property
    def controller_pid(self):
        if "controller_pid" not in self.info:  # files of a499dd7 and before (bench/soak_backpressure.py --old-build)
            return self.info["controller"]["pid"]
        return self.info["controller_pid"]

    def running(self):
        return self.proc.poll() is None

    def log_text(self):
        self._logf.flush()
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self, pcluster=None):
        if self.running() and pcluster is not None:
            try:
                with pcluster.Client(self.path, timeout=5) as c:
                    c.shutdown(timeout=30)
                self.proc.wait(30)
            except Exception as e:  # noqa: BLE001 - the kill below ends it anyway
                print(f"shutdown failed: {e!r}", file=sys.stderr)
        if self.running():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._logf.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def can_be_remote():
    """Whether clients that do not share /dev/shm can be made here (root and unshare)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def remote_command(argv):
    """argv run in a mount namespace with a /dev/shm of its own: a client whose every byte
    crosses the bridge, as one on another host."""
    script = 'mount -t tmpfs none /dev/shm && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, "sh", *argv]


def finish(name, ok, figures, args):
    figures = dict(figures, ok=bool(ok), variant="fast" if args.fast else "full")
    print(json.dumps(figures, indent=2, sort_keys=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2, sort_keys=True)
    print(f"{name}: {'SOAK OK' if ok else 'SOAK FAILED'}")
    return 0 if ok else 1
