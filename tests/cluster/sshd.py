"""A private sshd on one simulated host, for the ssh-tunnel tests.

Everything is its own: host key, a client key authorized only by this server, an ssh_config for
clients (known_hosts with this server's key, no other config read), all in a state directory.
sshd runs inside the host's namespaces with a tmpfs on /run of its own (its privilege separation
directory /run/sshd), so nothing of the machine's ssh set-up (/etc/ssh, ~/.ssh, /run) is used or
touched. Stdlib only.

    with SshServer(sim, "h1", state_dir) as ssh:
        env["PCLUSTER_SSH"] = ssh.ssh_command      # "ssh -F <state>/ssh_config"
        pcluster.Client(path, sshserver=ssh.server, sshkey=ssh.key)
"""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PORT = 2222


def available():
    """(True, "") or (False, why)."""
    for exe in (SSHD, "ssh", "ssh-keygen"):
        if not shutil.which(exe):
            return False, f"{exe} not found (apt-get install openssh-server openssh-client)"
    return True, ""


class SshServer:
    def __init__(self, sim, host, state_dir, port=PORT):
        self.sim = sim
        self.host = host
        self.addr = sim.addr[host]
        self.port = port
        self.dir = Path(state_dir)
        self.key = str(self.dir / "id_ed25519")
        self.config = self.dir / "ssh_config"
        self.server = f"root@{self.addr}:{port}"
        self.ssh_command = f"ssh -F {shlex.quote(str(self.config))}"
        self.proc = None
        self.log = self.dir / "sshd.log"

    def _keygen(self, path, comment):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                       check=True, capture_output=True, timeout=30)

    def start(self, timeout=20):
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, mode=0o700)
        host_key = self.dir / "ssh_host_ed25519_key"
        self._keygen(host_key, "pcluster-test-host")
        self._keygen(self.key, "pcluster-test-client")
        (self.dir / "authorized_keys").write_text(Path(self.key + ".pub").read_text())
        host_pub = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        (self.dir / "known_hosts").write_text(f"[{self.addr}]:{self.port} {' '.join(host_pub)}\n")
        (self.dir / "sshd_config").write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.addr}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "PidFile none",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "PrintMotd no",
            "LogLevel VERBOSE",
        ]) + "\n")
        self.config.write_text("\n".join([
            "Host *",
            f"  UserKnownHostsFile {self.dir / 'known_hosts'}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  IdentitiesOnly yes",
            "  LogLevel ERROR",
        ]) + "\n")
        inner = (f"mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && "
                 f"exec {SSHD} -D -e -f {shlex.quote(str(self.dir / 'sshd_config'))}")
        logf = open(self.log, "wb")
        self.proc = subprocess.Popen(self.sim.host_prefix(self.host) + ["/bin/sh", "-c", inner],
                                     stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.addr, self.port), timeout=1):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd on {self.host} did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def stop(self):
        """The listener and every session it started (their ssh clients then end too)."""
        if self.proc is None:
            return
        pids = [p for p in _descendants(self.proc.pid) if p != self.proc.pid]
        if self.proc.poll() is None:
            self.proc.terminate()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(root):
    """root and every process below it (from /proc's parent links)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out
