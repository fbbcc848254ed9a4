"""Fixtures for tests that need several nodes: a simulated two-node SLURM cluster (simcluster.py).

    sim        the SimCluster, up for the whole session (skipped where the machine cannot do it:
               not root, no slurmctld/slurmd/munge, no namespaces); down at the end
    sim_env    os.environ + sim.env, for clients on the login node (sbatch, srun, pcluster.Client)
    submit     submit(args, script) -> job id: sbatch a job whose files live in sim.shared_dir;
               every job it submitted is cancelled when the test is over

Run with /usr/bin/python3 -m pytest tests/cluster (testpaths in tests/pytest.ini only name
tests/python, so these run on request). PCLUSTER_SIM_STATE_DIR moves the state dir.
"""

import os
import subprocess
import sys
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
