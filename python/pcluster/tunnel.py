"""SSH tunnels to a job the client cannot reach directly (compute nodes behind a login node).

    rc = pcluster.Client(path, sshserver="user@login.cluster.org")          # or "login:2222"
    rc = pcluster.Client(job=1234, sshserver="login", sshkey="~/.ssh/id_ed25519")

The system's ssh (openssh-client) forwards a local port on 127.0.0.1 to each address of the job's
bridge, as seen from the ssh server, as ipyparallel does: `ssh -f -L ... server sleep N` puts
itself in the background once logged in and the forwards are set up, and stays while the
client's connection through it is open; it ends by itself after the client disconnects.

ssh runs with BatchMode (no password prompt that could hang a script): use a key (sshkey=, or
an agent) and accept the server's host key once (`ssh server true`). $PCLUSTER_SSH replaces the
ssh command, e.g. "ssh -F ~/.ssh/cluster.conf" or "ssh -J gateway".
"""

import os
import shlex
import socket
import subprocess
import tempfile

from . import _core
from .error import NoJobError

# How long the remote `sleep` holds the tunnel open for the client to connect through it; the
# tunnel then stays as long as that connection does.
HOLD_S = 30


class TunnelError(NoJobError):
    """ssh could not set up the tunnel (the message is ssh's own, with what to check)."""


def ssh_command():
    """The ssh command as a list: $PCLUSTER_SSH (split like a shell) or ["ssh"]."""
    text = _core.setting("PCLUSTER_SSH").strip()
    return shlex.split(text) if text else ["ssh"]


def split_server(server):
    """'user@host:2222' -> ('user@host', 2222); 'host' -> ('host', None); '[::1]:22' too."""
    server = str(server).strip()
    if not server:
        raise ValueError("sshserver is empty: give it as 'host', 'user@host' or 'user@host:port'")
    if "[" in server:  # user@[v6 address]:port
        user, _, rest = server.partition("[")
        addr, _, tail = rest.partition("]")
        if tail and not (tail.startswith(":") and tail[1:].isdigit()):
            raise ValueError(f"sshserver {server!r}: write it as 'user@[address]:port'")
        return user + addr, (int(tail[1:]) if tail else None)
    if server.count(":") == 1:
        host, port = server.split(":")
        if not port.isdigit():
            raise ValueError(f"sshserver {server!r}: the part after ':' must be a port number")
        return host, int(port)
    return server, None


def free_port():
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forward(server, targets, keyfile=None, timeout=15.0, hold=HOLD_S):
    """Forward a local port to each (ip, port) in `targets` through `server` with one ssh.

    Returns [(local_ip, local_port)] in the order of targets. Raises TunnelError with ssh's
    message and what to check when ssh fails (no route, refused key, unknown host key, ...)."""
    dest, port = split_server(server)
    argv = ssh_command() + ["-f", "-n", "-T", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                            "-o", f"ConnectTimeout={max(1, int(timeout))}", "-o", "ServerAliveInterval=30"]
    if keyfile:
        key = os.path.expanduser(str(keyfile))
        if not os.path.isfile(key):
            raise TunnelError(f"sshkey {keyfile!r}: no such file")
        argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
    if port:
        argv += ["-p", str(port)]
    local = []
    for ip, rport in targets:
        lport = free_port()
        host = f"[{ip}]" if ":" in ip else ip
        argv += ["-L", f"127.0.0.1:{lport}:{host}:{rport}"]
        local.append(("127.0.0.1", lport))
    argv += [dest, f"sleep {int(hold)}"]
    # ssh -f leaves a background child holding stdout/stderr: a file, not a pipe we would wait on.
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=timeout + 10, start_new_session=True)
        except FileNotFoundError:
            raise TunnelError(f"{argv[0]} not found: install the openssh-client package (or set PCLUSTER_SSH "
                              f"to your ssh command)") from None
        except subprocess.TimeoutExpired:
            raise TunnelError(f"ssh to {server} did not finish logging in within {timeout + 10:g} s "
                              f"(`{shlex.join(argv)}`): is the server reachable, and does it ask for something "
                              f"interactively? Log in once by hand with `ssh {server}`") from None
        err.seek(0)
        message = err.read().decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        raise TunnelError(f"cannot open an ssh tunnel through {server}: {message or f'ssh exit status {proc.returncode}'}"
                          f" (`{shlex.join(argv)}`). {_hint(message, server)}")
    return local


def _hint(message, server):
    m = message.lower()
    if "host key verification failed" in m or "no matching host key" in m:
        return f"ssh does not know {server}'s host key yet: log in once by hand (`ssh {server} true`) to accept it."
    if "permission denied" in m:
        return ("The server refused the login: pass sshkey= with a key it accepts, or load one into your "
                "ssh agent (the tunnel never asks for a password).")
    if "could not resolve" in m or "name or service not known" in m:
        return f"{server} does not resolve from this host: use its full name or address."
    if "connection refused" in m or "timed out" in m or "no route" in m:
        return f"No ssh server answers at {server}: check the name and port (user@host:port)."
    if "forward" in m:
        return "A local port was taken meanwhile: try again."
    return "Check that `ssh " + server + " true` works from this host without a prompt."
