"""Fixtures for tests that need several nodes: a simulated two-node SLURM cluster (simcluster.py).

    sim        the SimCluster, up for the whole session (skipped where the machine cannot do it:
               not root, no slurmctld/slurmd/munge, no namespaces); down at the end
    sim_env    os.environ + sim.env, for clients on the login node (sbatch, srun, pcluster.Client)
    submit     submit(args, script) -> job id: sbatch a job whose files live in sim.shared_dir;
               every job it submitted is cancelled when the test is over
    pcl        pcluster on the cluster (Pcl: env, cli(), python()); this process's environment
               points at the cluster while it lasts, so in-process clients work too
    own_jobs   cancels every job a test left in the queue (however it was submitted)

Run with /usr/bin/python3 -m pytest tests/cluster (testpaths in tests/pytest.ini only name
tests/python, so these run on request; scripts/test.sh does). PCLUSTER_SIM_STATE_DIR moves the
state dir; PCLUSTER_BUILD_DIR (default <repo>/build) names the build under test.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simcluster import SimCluster  # noqa: E402


@pytest.fixture(scope="session")
def sim():
    ok, why = SimCluster.available()
    if not ok:
        pytest.skip(f"no simulated cluster: {why}")
    cluster = SimCluster(os.environ.get("PCLUSTER_SIM_STATE_DIR", "/srv/pcluster-sim"))
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def sim_env(sim):
    return {**os.environ, **sim.env}


@pytest.fixture
def submit(sim, sim_env):
    """sbatch a script; the job runs in sim.shared_dir (a cwd under /tmp does not exist on the
    nodes: their /tmp is private) and writes its output to sim.shared_dir/job-<id>.out."""
    jobs = []

    def _submit(args, script, env=None):
        proc = subprocess.run(["sbatch", "--parsable", "-D", str(sim.shared_dir),
                               "-o", str(sim.shared_dir / "job-%j.out"), *args],
                              input="#!/bin/sh\n" + script, env=env or sim_env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        job_id = proc.stdout.strip().split(";")[0]
        jobs.append(job_id)
        return job_id

    yield _submit
    if jobs:
        subprocess.run(["scancel", *jobs], env=sim_env, capture_output=True, timeout=30)


# --------------------------------------------------------------------------- pcluster on the cluster
REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("PCLUSTER_BUILD_DIR", REPO / "build"))
PCLUSTER = BUILD / "bin" / "pcluster"
PYTHON = "/usr/bin/python3"  # Debian's: numpy, mpi4py, cloudpickle

if (BUILD / "python" / "pcluster" / "__init__.py").exists():
    sys.path.insert(0, str(BUILD / "python"))


class Pcl:
    """pcluster on the simulated cluster, seen from the login node.

    env        sim_env + the build's bin/ and python/, connection files in conn_dir (shared)
    cli(...)   run `pcluster ARGS` (the program, as a user would) in the shared dir; bounded
    python(code) run code in a fresh /usr/bin/python3 with env; bounded
    """

    def __init__(self, sim):
        self.sim = sim
        self.conn_dir = sim.shared_dir / "pcluster"
        self.conn_dir.mkdir(exist_ok=True)
        env = {**os.environ, **sim.env}
        for name in ("PCLUSTER_CONNECTION_FILE", "PCLUSTER_EXE", "PCLUSTER_SSH", "PCLUSTER_LAUNCHER", "PCLUSTER_ARGS"):
            env.pop(name, None)
        env["PATH"] = f"{BUILD / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONPATH"] = str(BUILD / "python")
        env["PCLUSTER_CONNECTION_DIR"] = str(self.conn_dir)
        env["PCLUSTER_NONINTERACTIVE"] = "1"
        self.env = env

    def cli(self, *args, timeout=120, env=None, cwd=None, input=None):
        return subprocess.run([str(PCLUSTER), *map(str, args)], env=env or self.env, cwd=cwd or self.sim.shared_dir,
                              capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def python(self, code, timeout=120, env=None):
        return subprocess.run([PYTHON, "-c", code], env=env or self.env, cwd=self.sim.shared_dir,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def jobs(self):
        """Ids of every job in the queue (all are the tests' own: the cluster is)."""
        out = self.sim.slurm(["squeue", "-h", "-o", "%i"], timeout=30, check=False).stdout
        return set(out.split())


@pytest.fixture(scope="session")
def pcl(sim):
    """The Pcl helper; this process's environment points at the cluster too (for in-process
    clients: pcluster.Client(job=...), pcluster.slurm), restored at the end."""
    if not PCLUSTER.exists():
        pytest.fail(f"{PCLUSTER} is not built: run bash scripts/build.sh (or set PCLUSTER_BUILD_DIR)")
    helper = Pcl(sim)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(helper.env)
    try:
        yield helper
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def own_jobs(pcl):
    """Jobs a test starts in any way are cancelled when it ends (those queued before it are left)."""
    before = pcl.jobs()
    yield
    new = pcl.jobs() - before
    if new:
        pcl.sim.slurm(["scancel", *sorted(new)], timeout=30, check=False)
        deadline = time.monotonic() + 30
        while pcl.jobs() & new and time.monotonic() < deadline:
            time.sleep(0.2)



def pytest_collection_finish(session):
    """Test modules are not importable on the engines: pickle their functions by value."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - Debian's python3-cloudpickle is a dependency
        return
    for mod in {getattr(item, "module", None) for item in session.items}:
        if mod is not None and mod.__name__ in sys.modules:
            cloudpickle.register_pickle_by_value(mod)
