#!/usr/bin/python3
"""A two-node SLURM cluster simulated on one machine, for pcluster's multi-node tests.

Each compute "host" (h1, h2) is a network namespace on a bridge, entered together with a
private UTS namespace (its own hostname) and a private mount namespace (its own /tmp, which
SLURM's PMIx needs: it creates /tmp/spmix_appdir_* per node, and its own /etc/hosts, where the
login node's name is its cluster address, as on a real node). The root namespace is the
"login node": it holds slurmctld, the bridge address 10.77.0.1 and the clients. Everything
every node must see (config, munge socket, a shared directory for connection files and job
output) lives in a state directory outside /tmp, like an NFS home.

Needs root, iproute2, util-linux (nsenter, unshare) and the Debian packages slurmctld, slurmd,
slurm-client and munge (no daemon of theirs has to run: this module starts its own munged
with its own key and socket). Stdlib only; use /usr/bin/python3.

Python:
    from simcluster import SimCluster
    ok, why = SimCluster.available()          # skip the tests with `why` when not ok
    with SimCluster() as sim:                 # up() ... down()
        env = {**os.environ, **sim.env}       # SLURM_CONF and Open MPI settings for the login node
        subprocess.run(["sbatch", "-N", "2", "-D", sim.shared_dir, "--wrap", "srun hostname"], env=env, timeout=30)
        sim.wait_job_state(job_id, None, timeout=60)   # None: gone from squeue; also job_state(id)
        sim.run_on("h1", ["hostname"], timeout=10)     # a command as on node h1
        # mpirun across hosts without SLURM: mpirun --mca plm_rsh_agent <sim.rsh_agent> --host vm:1,h1:2,h2:2

CLI (the cluster stays up between `up` and `down`; `up` prints the environment to export):
    /usr/bin/python3 tests/cluster/simcluster.py up|down|status [--state-dir DIR] [--purge]

Partitions: `debug` (default; h1, h2 with 8 CPUs declared each) and `onenode` (same nodes,
MaxNodes=1). Jobs that SLURM 22.05 accepts but can never start: `-p onenode -N 2` (PENDING,
reason PartitionNodeLimit) and `-N 5` or `-n 17` in `debug` (PENDING, reason PartitionConfig,
later PartitionNodeLimit for -N 5). Rejected at submission (rc 1): unknown partition, node,
feature, `--mem` or per-node CPU counts no node has; an unknown option gives rc 255.

Pitfalls: a job must run in a directory every node sees (sim.shared_dir, not a cwd under /tmp:
the nodes' /tmp is private, the job fails with JobLaunchFailure). One simulation per machine
(the bridge, namespaces h1/h2 and 10.77.0.0/24 are fixed). Network traffic stays on that subnet
and loopback; `env` pins Open MPI's TCP to the subnet, and down() points the left-over
slurm.conf at 127.0.0.1 so a client run after down() cannot send to 10.77.0.1 off the machine.
"""

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_STATE_DIR = Path("/srv/pcluster-sim")
SUBNET = "10.77.0.0/24"
LOGIN_ADDR = "10.77.0.1"
BRIDGE = "pclbr77"
HOSTS_MARK = "# pcluster-simcluster"  # ends every /etc/hosts line we add, so down() removes exactly those
SENTINEL = ".simcluster"  # marks a state dir as ours: up() only wipes a dir that has it
CPUS_PER_NODE = 8  # over-declared (the machine has 2 cores); slurmd accepts it with config_overrides
CTLD_PORT, SLURMD_PORT = 16817, 16818  # not SLURM's defaults, so a real local SLURM is not disturbed
# Directories under /tmp that every host must still see behind its private /tmp: the checkout
# these tests run from (a CI checkout may live in /tmp; its build is what the jobs run).
CARRIED = [d for d in [Path(__file__).resolve().parents[2]] if Path("/tmp") in d.parents]
# Shell words (with "$1" = the host's own tmp dir) that make it the host's /tmp, with CARRIED
# bound inside it first (a recursive bind keeps them).
TMP_MOUNTS = " && ".join([f'mount --bind "{d}" "$1/{d.relative_to("/tmp")}"' for d in CARRIED]
                         + ['mount --rbind "$1" /tmp'])
KILL_WAIT = 5  # s between SIGTERM and SIGKILL of a cancelled job (SLURM's default is 30)
DAEMONS = ("slurmctld", "slurmscriptd", "slurmd", "slurmstepd", "munged")

# A client (or test) on the login node needs these besides SLURM_CONF.
CLIENT_ENV = {
    # Everything runs as root here.
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    # Nodes declare more CPUs than exist, so Open MPI does not know it is oversubscribed and would
    # busy-wait at full speed in blocking calls (4x slower compute on the other ranks).
    "OMPI_MCA_mpi_yield_when_idle": "1",
    # Keep Open MPI on the simulated network (the root namespace also has the machine's real NIC).
    "OMPI_MCA_btl_tcp_if_include": SUBNET,
    "OMPI_MCA_oob_tcp_if_include": SUBNET,
}


class SimClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------- small helpers
def _run(argv, timeout=30, check=True, **kw):
    """subprocess.run with a bound, text output, and the command's stderr in the error."""
    kw.setdefault("capture_output", True)
    proc = subprocess.run(argv, timeout=timeout, text=True, **kw)
    if check and proc.returncode != 0:
        raise SimClusterError(f"{' '.join(map(str, argv))} -> rc {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _wait_for(predicate, timeout, what, interval=0.1):
    """Poll `predicate` until true; SimClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise SimClusterError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purpose (its parent will reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pids, grace):
    """SIGTERM, wait up to `grace` s, then SIGKILL whatever is left (and wait a bounded while)."""
    pids = {p for p in pids if p != os.getpid()}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(map(_alive, pids)):
            time.sleep(0.05)
        pids = {p for p in pids if _alive(p)}
        if not pids:
            return set()
    return pids


def _read(path):
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _tail(path, lines=15):
    text = _read(path).decode(errors="replace").splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:])


class SimCluster:
    """Two SLURM compute nodes (network namespaces h1, h2) plus the root namespace as login node.

    up() / down() (or `with`), `env`, `run_on(host, argv, timeout)`, `rsh_agent`, `available()`.
    """

    def __init__(self, state_dir=DEFAULT_STATE_DIR, hosts=("h1", "h2"), kill_wait=KILL_WAIT):
        self.state_dir = Path(state_dir).resolve()
        self.kill_wait = kill_wait
        self.hosts = tuple(hosts)
        self.addr = {h: f"10.77.0.{11 + i}" for i, h in enumerate(self.hosts)}
        self.login = socket.gethostname()  # SlurmctldHost must be this machine's hostname
        self.conf = self.state_dir / "slurm.conf"
        self.rsh_agent = str(self.state_dir / "nsrsh")
        self.shared_dir = self.state_dir / "shared"  # seen by every host: connection files, job output
        self.munge_dir = self.state_dir / "munge"
        self.slurm_dir = self.state_dir / "slurm"
        self.munge_socket = self.munge_dir / "munge.socket"

    # ----------------------------------------------------------------------- public API
    @property
    def env(self):
        """Environment additions for clients on the login node (merge into os.environ)."""
        return {"SLURM_CONF": str(self.conf), **CLIENT_ENV}

    @staticmethod
    def available():
        """(True, "") if this machine can run the simulation, else (False, why not)."""
        if os.geteuid() != 0:
            return False, "needs root (network namespaces, bind mounts)"
        for exe in ("slurmctld", "slurmd", "sinfo", "munged", "munge", "ip", "nsenter", "unshare", "runuser"):
            if not shutil.which(exe, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
                return False, f"{exe} not found (apt-get install slurmctld slurmd slurm-client munge iproute2)"
        try:
            pwd.getpwnam("munge")
        except KeyError:
            return False, "no 'munge' user (install the munge package)"
        probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, timeout=10)
        if probe.returncode != 0:
            return False, f"cannot create namespaces: {probe.stderr.decode(errors='replace').strip()}"
        return True, ""

    def host_prefix(self, host):
        """argv prefix that runs a command as on `host`: its network, its hostname, its own /tmp.

        nsenter --net and not `ip netns exec`: the latter remounts /sys, hiding /sys/fs/cgroup.
        """
        if host in (None, self.login, "login"):
            return []
        if host not in self.hosts:
            raise ValueError(f"unknown host {host!r} (hosts: {', '.join(self.hosts)})")
        enter = f'hostname "$0" && {TMP_MOUNTS} && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
        return ["nsenter", f"--net=/run/netns/{host}", "unshare", "--uts", "--mount", "--propagation", "private",
                "/bin/sh", "-c", enter, host, str(self._host_tmp(host)), str(self._host_hosts(host))]

    def run_on(self, host, argv, timeout, **kw):
        """subprocess.run(argv) inside `host` (h1, h2; None or the login name: root namespace).

        The environment defaults to os.environ + `env`; keyword arguments go to subprocess.run.
        """
        kw.setdefault("env", {**os.environ, **self.env})
        return subprocess.run(self.host_prefix(host) + list(argv), timeout=timeout, **kw)

    def up(self, timeout=60):
        """Start the cluster (cleaning an earlier run first); returns when every node is idle."""
        ok, why = self.available()
        if not ok:
            raise SimClusterError(f"cannot simulate a cluster here: {why}")
        self._check_state_dir()
        self.down()
        try:
            self._prepare_state_dir()
            self._write_host_files()
            self._write_slurm_conf()
            self._write_rsh_agent()
            self._network_up()
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmds(timeout)
        except BaseException as exc:
            logs = self._log_tails()
            try:
                self.down()
            except SimClusterError as cleanup:
                logs += f"\n  and cleaning up: {cleanup}"
            if isinstance(exc, Exception):
                raise SimClusterError(f"{exc}\n{logs}") from exc
            raise
        return self

    def down(self, purge=False):
        """Stop everything up() started (also after a crash or a failed up()); idempotent.

        Logs and config stay in the state dir for post-mortems unless `purge`.
        """
        self._stop_slurm()
        self._kill_host_processes()
        self._kill_own_daemons()
        self._network_down()
        self._remove_hosts_lines()
        self._disarm_conf()
        if purge and (self.state_dir / SENTINEL).exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        left = self.leftovers()
        if left:
            raise SimClusterError("down() left behind: " + "; ".join(left))

    def leftovers(self):
        """What of a simulation is still there (processes, namespaces, links, hosts lines, mounts)."""
        found = [f"process {pid} ({name})" for pid, name in self._own_processes()]
        found += [f"netns {h}" for h in self.hosts if Path(f"/run/netns/{h}").exists()]
        found += [f"link {link}" for link in self._own_links()]
        found += [f"/etc/hosts: {line}" for line in _read("/etc/hosts").decode().splitlines() if HOSTS_MARK in line]
        found += [f"mount {m}" for m in self._own_mounts()]
        return found

    def status(self):
        """Human-readable state: nodes as sinfo sees them, or what is left of a simulation."""
        if not self._ctld_alive():
            left = self.leftovers()
            return "down" + ("; leftovers: " + "; ".join(left) if left else "")
        proc = self.slurm(["sinfo", "-N", "-o", "%N %P %T"], timeout=10, check=False)
        return f"up (SLURM_CONF={self.conf})\n{proc.stdout.strip()}"

    def slurm(self, argv, timeout=30, check=True):
        """Run a SLURM client command on the login node with `env`; CompletedProcess (text)."""
        if not self._bridge_up():
            # Without the bridge, packets to the controller's 10.77.0.1 would leave the machine.
            raise SimClusterError("the simulated cluster is down")
        return _run(argv, timeout=timeout, check=check, env={**os.environ, **self.env})

    def job_state(self, job_id):
        """(state, reason) of a job from squeue, or (None, None) once it has left the queue."""
        proc = self.slurm(["squeue", "-h", "-j", str(job_id), "-o", "%T %r"], timeout=10, check=False)
        parts = proc.stdout.split(None, 1)
        return (parts[0], parts[1].strip()) if parts else (None, None)

    def wait_job_state(self, job_id, states, timeout):
        """Wait until the job is in one of `states` (None = gone from squeue); returns the state."""
        states = {states} if isinstance(states, (str, type(None))) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_state(job_id)[0]
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise SimClusterError(f"job {job_id} still {state} after {timeout:g} s (waited for {states})")
            time.sleep(0.1)

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    # ----------------------------------------------------------------------- state dir and files
    def _host_tmp(self, host):
        return self.state_dir / "hosts" / host / "tmp"

    def _host_hosts(self, host):
        return self.state_dir / "hosts" / host / "hosts"

    def _write_host_files(self):
        """Each compute host's own /etc/hosts, as a real node's: the login node by its name at its
        cluster address (here the root namespace's /etc/hosts may map that name to loopback),
        every node by its name."""
        for h in self.hosts:
            lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
                     f"{LOGIN_ADDR} {self.login}"] + [f"{self.addr[n]} {n}" for n in self.hosts]
            self._host_hosts(h).write_text("\n".join(lines) + "\n")

    def _check_state_dir(self):
        if self.state_dir.exists() and any(self.state_dir.iterdir()) and not (self.state_dir / SENTINEL).exists():
            raise SimClusterError(f"{self.state_dir} is not empty and not a simcluster state dir; refusing to wipe it")

    def _prepare_state_dir(self):
        """Fresh state dir (old jobs and node states must not come back)."""
        self._check_state_dir()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True, mode=0o755)
        (self.state_dir / SENTINEL).touch()
        for d in [self.slurm_dir, self.shared_dir] + [self._host_tmp(h) for h in self.hosts]:
            d.mkdir(parents=True)
        for d in [self.shared_dir] + [self._host_tmp(h) for h in self.hosts]:
            d.chmod(0o1777)
        for h in self.hosts:  # mount points for what TMP_MOUNTS carries into each host's /tmp
            for d in CARRIED:
                (self._host_tmp(h) / d.relative_to("/tmp")).mkdir(parents=True, exist_ok=True)
        self._prepare_munge_dir()

    def _prepare_munge_dir(self):
        """munged (as user munge) insists on owning its key (0600) and a dir nobody else writes."""
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(mode=0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)

    def _write_slurm_conf(self):
        s = self.slurm_dir
        nodes = ",".join(self.hosts)
        lines = [
            "ClusterName=pclsim",
            f"SlurmctldHost={self.login}({LOGIN_ADDR})",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            # No CommunicationParameters=NoCtldInAddrAny: it binds the address the hostname resolves
            # to (127.0.0.1 here), which the nodes cannot reach. So slurmctld listens on all
            # interfaces; all its traffic still goes over the bridge.
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "MpiDefault=pmix",
            "MailProg=/bin/true",
            # Accept CPUs= larger than the hardware instead of marking the node invalid.
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            # Start batch jobs at once (the default delays them ~3 s).
            "SchedulerParameters=batch_sched_delay=0",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            f"KillWait={self.kill_wait}",
            f"StateSaveLocation={s}/ctld-state",
            f"SlurmdSpoolDir={s}/spool-%n",
            f"SlurmctldPidFile={s}/slurmctld.pid",
            f"SlurmdPidFile={s}/slurmd-%n.pid",
            f"SlurmctldLogFile={s}/slurmctld.log",
            f"SlurmdLogFile={s}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        lines += [f"NodeName={h} NodeAddr={self.addr[h]} NodeHostname={h} CPUs={CPUS_PER_NODE} Boards=1 "
                  f"SocketsPerBoard=1 CoresPerSocket={CPUS_PER_NODE} ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
                  for h in self.hosts]
        lines += [
            f"PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP",
            # Accepts -N 2 (EnforcePartLimits=NO, the default) but can never run it: PartitionNodeLimit.
            f"PartitionName=onenode Nodes={nodes} MaxNodes=1 MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _disarm_conf(self):
        """Point clients that still use this SLURM_CONF at loopback: with the bridge gone, the
        controller address 10.77.0.1 would be routed off the machine. They fail (rc 1) instead."""
        if not self.conf.exists():
            return
        lines = self.conf.read_text().splitlines()
        lines = [f"SlurmctldHost={self.login}(127.0.0.1)" if line.startswith("SlurmctldHost=") else line
                 for line in lines]
        self.conf.write_text("\n".join(lines) + "\n")

    def _write_rsh_agent(self):
        """Open MPI's plm_rsh_agent: "ssh HOST CMD..." becomes "enter HOST's namespaces; sh -c CMD".

        Like ssh, the command words are joined and parsed by a shell. The login host runs it as is.
        """
        cases = "".join(f"  {h}|{self.addr[h]}) enter {h} {self._host_tmp(h)} {self._host_hosts(h)} \"$*\" ;;\n"
                        for h in self.hosts)
        script = f"""#!/bin/sh
# rsh agent for Open MPI in the simulated cluster (written by simcluster.py).
# Usage (as Open MPI calls ssh): nsrsh HOST COMMAND...
enter() {{  # HOST TMPDIR HOSTSFILE COMMAND: its network namespace, hostname, private /tmp and /etc/hosts
  exec nsenter --net=/run/netns/"$1" unshare --uts --mount --propagation private \\
    /bin/sh -c 'hostname "$0" && {TMP_MOUNTS} && mount --bind "$2" /etc/hosts && exec /bin/sh -c "$3"' \\
    "$1" "$2" "$3" "$4"
}}
host=$1; shift
case "$host" in
{cases}  {self.login}|localhost|{LOGIN_ADDR}) exec /bin/sh -c "$*" ;;
  *) echo "nsrsh: unknown host $host" >&2; exit 255 ;;
esac
"""
        Path(self.rsh_agent).write_text(script)
        Path(self.rsh_agent).chmod(0o755)

    # ----------------------------------------------------------------------- network
    def _veth(self, host):
        return f"pcl{host}"  # root side; the host side is pcl{host}p (names stay under 15 chars)

    def _network_up(self):
        ip = lambda *a: _run(["ip", *a], timeout=10)  # noqa: E731
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{LOGIN_ADDR}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for h in self.hosts:
            v = self._veth(h)
            ip("netns", "add", h)
            ip("link", "add", v, "type", "veth", "peer", "name", v + "p")
            ip("link", "set", v, "master", BRIDGE)
            ip("link", "set", v, "up")
            ip("link", "set", v + "p", "netns", h)
            ip("-n", h, "addr", "add", f"{self.addr[h]}/24", "dev", v + "p")
            ip("-n", h, "link", "set", v + "p", "up")
            ip("-n", h, "link", "set", "lo", "up")
        self._add_hosts_lines()

    def _network_down(self):
        for h in self.hosts:
            if Path(f"/run/netns/{h}").exists():
                _run(["ip", "netns", "del", h], timeout=10, check=False)
        for link in self._own_links():  # veths vanish with their namespace; this catches half-built ones
            _run(["ip", "link", "del", link], timeout=10, check=False)
        self._release_netns_dir()

    @staticmethod
    def _release_netns_dir():
        """`ip netns add` bind-mounts /run/netns on itself; undo that once no namespace is left in it."""
        netns = Path("/run/netns")
        if netns.is_dir() and not any(netns.iterdir()):
            if "/run/netns" in SimCluster._mount_points():
                _run(["umount", "/run/netns"], timeout=10, check=False)
            try:
                netns.rmdir()
            except OSError:
                pass

    @staticmethod
    def _bridge_up():
        return Path(f"/sys/class/net/{BRIDGE}").exists()

    def _own_links(self):
        names = [BRIDGE] + [self._veth(h) for h in self.hosts]
        return [n for n in names if Path(f"/sys/class/net/{n}").exists()]

    def _add_hosts_lines(self):
        """Node names must resolve on the login node too (the root namespace's /etc/hosts)."""
        self._remove_hosts_lines()
        lines = "".join(f"{self.addr[h]} {h} {HOSTS_MARK}\n" for h in self.hosts)
        # Rewritten in place, not replaced: /etc/hosts is often a bind mount in containers.
        with open("/etc/hosts", "r+") as f:
            text = f.read()
            if text and not text.endswith("\n"):
                text += "\n"
            f.seek(0)
            f.write(text + lines)
            f.truncate()

    @staticmethod
    def _remove_hosts_lines():
        with open("/etc/hosts", "r+") as f:
            text = f.read()
            kept = "".join(line for line in text.splitlines(True) if HOSTS_MARK not in line)
            if kept != text:
                f.seek(0)
                f.write(kept)
                f.truncate()

    @staticmethod
    def _mount_points():
        return [line.split()[4] for line in _read("/proc/self/mountinfo").decode().splitlines()]

    def _own_mounts(self):
        prefixes = [str(self.state_dir) + "/"] + [f"/run/netns/{h}" for h in self.hosts]
        return [m for m in self._mount_points() if any(m == p or m.startswith(p) for p in prefixes)]

    # ----------------------------------------------------------------------- daemons
    def _start_munged(self):
        m = self.munge_dir
        _run(["runuser", "-u", "munge", "--", "munged", f"--socket={self.munge_socket}", f"--key-file={m}/munge.key",
              f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"], timeout=15)
        _wait_for(self._munge_works, 10, "munged to answer")

    def _munge_works(self):
        sock = f"--socket={self.munge_socket}"
        try:
            cred = _run(["munge", sock, "-n"], timeout=5, check=False)
            return cred.returncode == 0 and _run(["unmunge", sock], timeout=5, check=False,
                                                 input=cred.stdout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _start_slurmctld(self):
        # slurmctld daemonizes; the foreground part returns once it has forked.
        _run(["slurmctld", "-f", str(self.conf)], timeout=30, env={**os.environ, "SLURM_CONF": str(self.conf)})
        _wait_for(self._ctld_alive, 15, "slurmctld to answer (scontrol ping)", interval=0.2)

    def _ctld_alive(self):
        if not (self._bridge_up() and any(name == "slurmctld" for _, name in self._own_processes())):
            return False
        try:
            return "is UP" in self.slurm(["scontrol", "ping"], timeout=5, check=False).stdout
        except subprocess.TimeoutExpired:
            return False

    def _start_slurmds(self, timeout):
        for h in self.hosts:
            proc = self.run_on(h, ["slurmd", "-f", str(self.conf), "-N", h], timeout=30,
                               capture_output=True, text=True)
            if proc.returncode != 0:
                raise SimClusterError(f"slurmd on {h} failed (rc {proc.returncode}): {proc.stderr.strip()}")
        _wait_for(self._all_idle, timeout, f"nodes {', '.join(self.hosts)} to be idle in sinfo", interval=0.2)

    def _all_idle(self):
        try:
            out = self.slurm(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"], timeout=5, check=False).stdout
        except subprocess.TimeoutExpired:
            return False
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(h) == "idle" for h in self.hosts)

    def _stop_slurm(self):
        """Ask slurmctld to stop itself and every slurmd (state saved); bounded."""
        if not self._ctld_alive():
            return
        try:
            self.slurm(["scontrol", "shutdown"], timeout=10, check=False)
        except subprocess.TimeoutExpired:
            pass
        pids = [p for p, name in self._own_processes() if name in ("slurmctld", "slurmd")]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(map(_alive, pids)):
            time.sleep(0.05)

    def _kill_host_processes(self):
        """Whatever still runs in a host namespace (job steps, orteds, slurmstepd) is ours."""
        pids = set()
        for h in self.hosts:
            if Path(f"/run/netns/{h}").exists():
                out = _run(["ip", "netns", "pids", h], timeout=10, check=False).stdout
                pids.update(int(p) for p in out.split())
        _terminate(pids, grace=3)

    def _kill_own_daemons(self):
        _terminate({pid for pid, _ in self._own_processes()}, grace=5)

    def _own_processes(self):
        """(pid, name) of SLURM/munge daemons of this state dir, found by their command line or
        SLURM_CONF, so a crashed run's daemons are found without pid files."""
        found = []
        conf = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            name = _read(entry / "comm").decode().strip()
            if name not in DAEMONS:
                continue
            marks = _read(entry / "cmdline") + b"\0" + _read(entry / "environ")
            if str(self.state_dir).encode() + b"/" in marks or conf in marks:
                found.append((int(entry.name), name))
        return found

    def _log_tails(self):
        logs = [self.munge_dir / "munged.log", self.slurm_dir / "slurmctld.log"]
        logs += [self.slurm_dir / f"slurmd-{h}.log" for h in self.hosts]
        return "\n".join(f"  {p}:\n{_tail(p)}" for p in logs if p.exists())


# --------------------------------------------------------------------------- CLI
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="config, logs, shared files")
    parser.add_argument("--purge", action="store_true", help="down: also delete the state dir")
    args = parser.parse_args(argv)
    sim = SimCluster(args.state_dir)
    try:
        if args.command == "up":
            t0 = time.monotonic()
            sim.up()
            print(f"up in {time.monotonic() - t0:.1f} s")
            print(sim.status())
            print("export " + " ".join(f"{k}={v}" for k, v in sim.env.items()))
        elif args.command == "down":
            t0 = time.monotonic()
            sim.down(purge=args.purge)
            print(f"down in {time.monotonic() - t0:.1f} s")
        else:
            print(sim.status())
    except SimClusterError as exc:
        print(f"simcluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
