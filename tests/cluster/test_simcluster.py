"""The simulated cluster behaves like a real two-node SLURM cluster (and pins SLURM's answers
that pcluster's launcher relies on: pending reasons, rejected submissions)."""

import re
import subprocess
import time
from pathlib import Path

import pytest

# One write per rank, so output merged by mpirun/srun stays parseable.
ALLREDUCE = ("import sys; from mpi4py import MPI; c = MPI.COMM_WORLD; "
             "sys.stdout.write(f'rank={c.rank} host={MPI.Get_processor_name()} sum={c.allreduce(c.rank)}\\n')")
RANK_LINE = re.compile(r"rank=(\d+) host=(\S+) sum=(\d+)")


def ranks(output):
    """{rank: (host, allreduce sum)} from ALLREDUCE's output."""
    return {int(r): (host, int(s)) for r, host, s in RANK_LINE.findall(output)}


def job_output(sim, job_id):
    return (sim.shared_dir / f"job-{job_id}.out").read_text()


def wait_reason(sim, job_id, reasons, timeout=15):
    """Wait until squeue shows the job PENDING with one of `reasons` (the first scheduler pass
    may take a moment; before it the reason is None)."""
    deadline = time.monotonic() + timeout
    while True:
        state, reason = sim.job_state(job_id)
        if state == "PENDING" and reason in reasons:
            return reason
        assert time.monotonic() < deadline, f"job {job_id}: {state} {reason}, expected PENDING {reasons}"
        time.sleep(0.2)


def test_srun_spans_both_hosts(sim, sim_env):
    proc = subprocess.run(["srun", "--immediate=10", "-N", "2", "-n", "4", "hostname"],
                          env=sim_env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {"h1", "h2"}


def test_hosts_have_own_hostname_and_tmp(sim):
    marker = "/tmp/simcluster-marker"
    on_h1 = sim.run_on("h1", ["sh", "-c", f"hostname && touch {marker}"], timeout=10, capture_output=True, text=True)
    try:
        assert on_h1.stdout.strip() == "h1"
        assert sim.run_on("h2", ["test", "-e", marker], timeout=10).returncode != 0
        assert not Path(marker).exists()
    finally:
        sim.run_on("h1", ["rm", "-f", marker], timeout=10)


@pytest.mark.parametrize("launch", ["srun --mpi=pmix", "mpirun"])
def test_mpi_job_across_nodes(sim, submit, launch):
    job = submit(["-N", "2", "-n", "4"], f'{launch} /usr/bin/python3 -c "{ALLREDUCE}"\n')
    sim.wait_job_state(job, None, timeout=60)
    got = ranks(job_output(sim, job))
    assert sorted(got) == [0, 1, 2, 3], job_output(sim, job)
    assert {host for host, _ in got.values()} == {"h1", "h2"}
    assert {total for _, total in got.values()} == {6}


def test_job_sees_submitter_environment(sim, submit, sim_env):
    job = submit(["-N", "1"], "echo submit=$SLURM_SUBMIT_HOST nodes=$SLURM_JOB_NODELIST mark=$SIM_MARK\n",
                 env={**sim_env, "SIM_MARK": "passed"})
    sim.wait_job_state(job, None, timeout=30)
    assert f"submit={sim.login} nodes=h1 mark=passed" in job_output(sim, job)


def test_mpirun_without_slurm_through_rsh_agent(sim, sim_env):
    proc = subprocess.run(["mpirun", "--mca", "plm_rsh_agent", sim.rsh_agent, "--host", f"{sim.login}:1,h1:2,h2:2",
                           "-n", "5", "--mca", "btl", "tcp,self,vader", "/usr/bin/python3", "-c", ALLREDUCE],
                          env=sim_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = ranks(proc.stdout)
    assert got[0][0] == sim.login
    assert sorted(host for host, _ in got.values()) == sorted([sim.login, "h1", "h1", "h2", "h2"])
    assert {total for _, total in got.values()} == {10}


def test_job_waiting_for_resources(sim, submit):
    blocker = submit(["-N", "2", "-n", "16"], "sleep 60\n")  # every declared CPU
    sim.wait_job_state(blocker, "RUNNING", timeout=30)
    waiting = submit(["-N", "2", "-n", "4"], "true\n")
    assert wait_reason(sim, waiting, {"Resources"}) == "Resources"


@pytest.mark.parametrize("args, reasons", [
    (["-p", "onenode", "-N", "2"], {"PartitionNodeLimit"}),  # partition MaxNodes=1
    (["-N", "5"], {"PartitionConfig", "PartitionNodeLimit"}),  # more nodes than exist: accepted, never runs
])
def test_job_that_can_never_start(sim, submit, args, reasons):
    job = submit(args, "true\n")
    wait_reason(sim, job, reasons)
    time.sleep(2)
    assert sim.job_state(job) in {("PENDING", r) for r in reasons}


@pytest.mark.parametrize("args, rc, message", [
    (["-p", "nosuch"], 1, "Invalid partition name specified"),
    (["--tme=1"], 255, "unrecognized option '--tme=1'"),
    (["--mem=999999"], 1, "Requested node configuration is not available"),
    (["-N", "1", "-n", "9"], 1, "Requested node configuration is not available"),
    (["-w", "h3"], 1, "Invalid node name specified"),
])
def test_rejected_submissions(sim, sim_env, args, rc, message):
    proc = subprocess.run(["sbatch", *args, "--wrap", "true"], env=sim_env, capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (rc, "")
    assert message in proc.stderr


def test_down_leaves_nothing_and_up_again(sim):
    """Last in this module: it restarts the session's cluster."""
    sim.down()
    assert sim.leftovers() == []
    assert "pcluster-simcluster" not in Path("/etc/hosts").read_text()
    sim.up()
    assert "idle" in sim.status()
