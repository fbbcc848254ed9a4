"""End-to-end fixtures: real pcluster jobs started through a launcher (mpirun for now).

Fixtures
    launcher     how a job is started (``--pcluster-launcher``, default ``mpirun``); a SLURM
                 launcher only has to implement ``command()`` to rerun every test under srun.
    job          one shared job (4 engines) for the whole session; .path, .proc, .log
    rc           a Client of the shared job, closed after the test
    start_job    factory for short-lived jobs of a test's own (shutdown, bad starts, ...);
                 every job it started is ended when the test is over.

Functions written in the test modules are pickled by value (cloudpickle), so the engines, which
cannot import the tests, can run them.
"""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("PCLUSTER_BUILD_DIR", REPO / "build"))

# The client package: use the build tree when it is not installed.
try:
    import pcluster  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(BUILD / "python"))
    import pcluster  # noqa: F401

START_TIMEOUT = 30.0  # seconds for a job to write its connection file
EXIT_TIMEOUT = 30.0  # seconds for a job to end after shutdown()
NUM_ENGINES = 4


# --------------------------------------------------------------------------- environment
def pcluster_exe():
    """The pcluster program: $PCLUSTER_EXE, build/bin, else PATH."""
    env = os.environ.get("PCLUSTER_EXE")
    if env:
        return env
    built = BUILD / "bin" / "pcluster"
    if built.exists():
        return str(built)
    found = shutil.which("pcluster")
    if not found:
        pytest.fail("cannot find the pcluster program: build it (ninja -C build) or set PCLUSTER_EXE")
    return found


def job_env(extra=None):
    """Environment for jobs: the engines need the pcluster package (build/python) and Open MPI
    must be allowed to run as root in containers."""
    env = dict(os.environ)
    pkg = str(Path(pcluster.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [pkg, env.get("PYTHONPATH", "")] if p)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.pop("PCLUSTER_CONNECTION_FILE", None)
    if extra:
        env.update(extra)
    return env


def execute_notebook(nb, job, path, client_class=None, timeout=60):
    """Executes notebook `nb` (nbformat, run in folder `path`) with nbclient in a real ipykernel
    that imports pcluster from this build and finds `job` through $PCLUSTER_CONNECTION_FILE.
    Cells that fail leave an error output (allow_errors), so one failure does not hide the
    others. Returns the NotebookClient."""
    import nbclient

    pkg = str(Path(pcluster.__file__).resolve().parent.parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in [pkg, os.environ.get("PYTHONPATH", "")] if p))
        mp.setenv("PCLUSTER_CONNECTION_FILE", str(job.path))
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        client = (client_class or nbclient.NotebookClient)(
            nb, kernel_name="python3", timeout=timeout, startup_timeout=60, allow_errors=True,
            resources={"metadata": {"path": str(path)}},
        )
        client.execute()
    return client


# --------------------------------------------------------------------------- launchers
class MpirunLauncher:
    """`mpirun -n N [--oversubscribe] pcluster ARGS`."""

    name = "mpirun"

    def __init__(self):
        self.mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
        if not self.mpirun:
            pytest.fail("mpirun not found on PATH")
        try:
            out = subprocess.run([self.mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        # Open MPI refuses more ranks than cores without --oversubscribe (CI machines are small).
        self.openmpi = "Open MPI" in out or "OpenRTE" in out

    def command(self, nranks, args, recovery=True):
        """recovery: the job survives an engine's death (the documented way to start pcluster)."""
        cmd = [self.mpirun, "-n", str(nranks)]
        if self.openmpi:
            cmd.append("--oversubscribe")
            if recovery:
                cmd.append("--enable-recovery")
        return cmd + [pcluster_exe()] + list(args)


class SrunLauncher:
    """`srun --mpi=pmix -N 2 -n N pcluster ARGS`: the ranks on the nodes of a SLURM cluster (the
    simulated one: `/usr/bin/python3 tests/cluster/simcluster.py up`, export what it prints), the
    tests on its login node. Connection files must be where every node sees them: run pytest with
    --basetemp in such a directory (tests/cluster/test_slurm.py reruns tests this way).
    PCLUSTER_TEST_SRUN_NODES sets -N (default 2)."""

    name = "srun"

    def __init__(self):
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.fail(f"srun launcher: cannot ask SLURM (sinfo): {e}")
        if out.returncode != 0 or not out.stdout.strip():
            pytest.fail(f"srun launcher: no SLURM cluster answers (sinfo: {out.stderr.strip()}); start one with "
                        f"`/usr/bin/python3 tests/cluster/simcluster.py up` and export what it prints")
        self.nodes = int(os.environ.get("PCLUSTER_TEST_SRUN_NODES", "2"))

    def command(self, nranks, args, recovery=True):
        """recovery: the step outlives an engine's death (srun without --kill-on-bad-exit)."""
        return ["srun", "--mpi=pmix", "--quiet", "-N", str(min(self.nodes, nranks)), "-n", str(nranks),
                f"--kill-on-bad-exit={0 if recovery else 1}", pcluster_exe(), *args]


LAUNCHERS = {"mpirun": MpirunLauncher, "srun": SrunLauncher}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "sanitizer_unfit(why): left out of the sanitizer build's run (tests/fuzz/run.sh) for the reason given; "
        "it runs in every normal run",
    )


def pytest_addoption(parser):
    parser.addoption(
        "--pcluster-launcher",
        default=os.environ.get("PCLUSTER_TEST_LAUNCHER", "mpirun"),
        choices=sorted(LAUNCHERS),
        help="how the end-to-end tests start pcluster jobs",
    )


@pytest.fixture(scope="session")
def launcher(request):
    return LAUNCHERS[request.config.getoption("--pcluster-launcher")]()


# --------------------------------------------------------------------------- jobs
def _end_with_the_tests():
    """In the job's launcher, before exec: SIGTERM when the test process dies without its teardown
    (killed, or a sanitizer ended it), so no job outlives the tests and eats the CPU of later ones."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Job:
    """A running (or finished) pcluster job started by the tests."""

    def __init__(self, launcher, path, nranks=NUM_ENGINES + 1, extra_args=(), log=None, env=None, recovery=True):
        self.path = Path(path)
        self.nranks = nranks
        self.log = Path(log) if log else self.path.with_name(self.path.name + ".log")
        self.cmd = launcher.command(nranks, ["--connection-file", str(self.path), *extra_args], recovery=recovery)
        # A file already there (stale, or another job's) is not this job's: wait_ready skips it.
        try:
            self._before = self.path.read_bytes()
        except OSError:
            self._before = None
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=job_env(env),
            start_new_session=True,  # own process group: the teardown can end all of it
            preexec_fn=_end_with_the_tests,
        )

    def log_text(self):
        if not self._logf.closed:
            self._logf.flush()
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self):
        return f"$ {' '.join(self.cmd)}\n(exit status {self.proc.poll()})\n--- log ---\n{self.log_text()}"

    def running(self):
        return self.proc.poll() is None

    def wait_ready(self, timeout=START_TIMEOUT):
        """Wait until this job has written its connection file (a complete JSON document, not
        what was there before it started); fail (with the log) if the job exits first or the time
        runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.path.read_bytes()
                if data != self._before:
                    return json.loads(data)
            except (OSError, ValueError):
                pass
            if not self.running():
                pytest.fail(f"pcluster job exited before writing {self.path}\n{self.describe()}")
            time.sleep(0.05)
        pytest.fail(f"pcluster job did not write {self.path} within {timeout:g} s\n{self.describe()}")

    def wait_exit(self, timeout=EXIT_TIMEOUT):
        """The exit status, or None if the job is still running after timeout seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """End the whole process group (SIGTERM, then SIGKILL)."""
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if not self.running():
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            self.wait_exit(grace)
        # Stray ranks or the bridge may outlive mpirun in the group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _wrote_file(self):
        """Whether the connection file is there and was written by this job (not the file of
        another job that this one failed to replace)."""
        try:
            return self.path.read_bytes() != self._before
        except OSError:
            return False

    def stop(self):
        """Shut the job down through a client if it still runs; kill it if that fails. Returns
        whether a shutdown ended it cleanly (mpirun exit status 0, connection file removed)."""
        clean = False
        if self.running() and self._wrote_file():
            try:
                with pcluster.Client(str(self.path), timeout=5) as c:
                    c.shutdown(timeout=EXIT_TIMEOUT)
                clean = self.wait_exit(EXIT_TIMEOUT) == 0 and not self.path.exists()
            except Exception as e:  # the job may be broken; the kill below ends it anyway
                print(f"shutdown of {self.path} failed: {e!r}", file=sys.stderr)
        self.kill()
        self._logf.close()
        return clean


@pytest.fixture(scope="session")
def job(launcher, tmp_path_factory):
    """One job with 4 engines shared by most tests."""
    d = tmp_path_factory.mktemp("job")
    j = Job(launcher, d / "conn.json")
    try:
        j.wait_ready()
        yield j
    finally:
        was_running = j.running()
        clean = j.stop()
    # After everything the tests did to it, the job still shuts down cleanly.
    if was_running and not clean:
        pytest.fail(f"the shared job did not shut down cleanly\n{j.describe()}")


@pytest.fixture
def start_job(launcher, tmp_path):
    """start_job(nranks=3, path=None, extra_args=(), wait=True, env=None, recovery=True) -> Job;
    ended after the test."""
    jobs = []

    def start(nranks=3, path=None, extra_args=(), wait=True, env=None, recovery=True):
        path = Path(path) if path else tmp_path / f"conn{len(jobs)}.json"
        log = tmp_path / f"job{len(jobs)}.log"
        j = Job(launcher, path, nranks, extra_args, log=log, env=env, recovery=recovery)
        jobs.append(j)
        if wait:
            j.wait_ready()
        return j

    yield start
    for j in reversed(jobs):
        j.stop()


@pytest.fixture
def rc(job):
    """A client of the shared job."""
    if not job.running():
        pytest.fail(f"the shared pcluster job is gone\n{job.describe()}")
    c = pcluster.Client(str(job.path), timeout=10)
    yield c
    c.close()


# --------------------------------------------------------------------------- pickling
def pytest_collection_finish(session):
    """Test modules are not importable on the engines: pickle their functions by value."""
    seen = set()
    for item in session.items:
        mod = getattr(item, "module", None)
        if mod is not None and mod.__name__ not in seen and mod.__name__ in sys.modules:
            seen.add(mod.__name__)
            cloudpickle.register_pickle_by_value(mod)
