"""pcluster across two SLURM nodes: engines on h1 and h2, a client on the login node.

PCLUSTER_BUILD_DIR (default: <repo>/build) names the build whose bin/pcluster and python/ are used;
the nodes see it at the same path (the simulation shares the filesystem).
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

BUILD = Path(os.environ.get("PCLUSTER_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
PCLUSTER = BUILD / "bin" / "pcluster"

pytestmark = pytest.mark.skipif(not PCLUSTER.exists(), reason=f"{PCLUSTER} not built")

# Run in a fresh /usr/bin/python3 so a hung client is bounded by the subprocess timeout.
CLIENT = """
import json, sys
sys.path.insert(0, {python!r})
import pcluster
rc = pcluster.Client({conn!r}, timeout=60)
info = json.load(open({conn!r}))  # read now: the job removes it when it ends
hosts = rc[:].apply_sync(lambda: __import__("socket").gethostname())
rc.shutdown()
print(json.dumps({{"hosts": hosts, "host": info["host"], "ip": info["ip"]}}))
"""


def start_pcluster(sim, submit, ntasks=5):
    """sbatch -N 2 -n ntasks running pcluster under srun; returns (job id, connection file)."""
    script = (f"export PYTHONPATH={BUILD / 'python'}\n"
              f"srun --mpi=pmix {PCLUSTER} --connection-file {sim.shared_dir}/conn-$SLURM_JOB_ID.json\n")
    job = submit(["-N", "2", "-n", str(ntasks)], script)
    return job, sim.shared_dir / f"conn-{job}.json"


def pcluster_processes(sim):
    """pids of pcluster programs still running on any node."""
    pids = []
    for host in sim.hosts:
        out = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True, timeout=10).stdout
        for pid in out.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("pcluster"):
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


def test_client_on_login_node_reaches_engines_on_both_nodes(sim, submit, sim_env):
    job, conn = start_pcluster(sim, submit)
    client = CLIENT.format(python=str(BUILD / "python"), conn=str(conn))
    proc = subprocess.run(["/usr/bin/python3", "-c", client], env=sim_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(got["hosts"]) == 4 and set(got["hosts"]) == {"h1", "h2"}
    # Without --ip, a job submitted from the login node listens where the login node reaches it:
    # an address of its first node, never a wildcard, loopback or a name (the name is beside it).
    assert (got["host"], got["ip"]) == ("h1", "10.77.0.11")
    sim.wait_job_state(job, None, timeout=60)
    out = subprocess.run(["scontrol", "show", "job", job], env=sim_env, capture_output=True, text=True, timeout=10)
    assert "JobState=COMPLETED" in out.stdout


def test_scancel_ends_every_pcluster_process(sim, submit, sim_env):
    job, conn = start_pcluster(sim, submit)
    deadline = time.monotonic() + 60
    while not (conn.exists() and conn.stat().st_size):
        assert time.monotonic() < deadline, "no connection file"
        time.sleep(0.2)
    t0 = time.monotonic()
    subprocess.run(["scancel", job], env=sim_env, check=True, timeout=10)
    # SLURM sends SIGTERM (SIGKILL only after KillWait): the controller tells the bridge, gives
    # the engines 2 s and exits; nothing waits for the SIGKILL.
    while pcluster_processes(sim):
        assert time.monotonic() - t0 < sim.kill_wait + 2, "pcluster processes outlived SLURM's SIGKILL"
        time.sleep(0.1)
    gone = time.monotonic() - t0
    assert not conn.exists(), "the connection file outlived the job"
    sim.wait_job_state(job, None, timeout=sim.kill_wait + 10)
    # Well before SLURM's SIGKILL: the controller's 2 s for the engines, and the bridge's farewell.
    assert gone < sim.kill_wait - 1, f"pcluster processes lasted {gone:.1f} s after scancel"
