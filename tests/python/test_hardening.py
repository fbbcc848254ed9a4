"""The bridge under attack and load (issue 11): real jobs, a real bridge, attacks made for real
over TCP with a raw socket speaking the wire protocol, and real clients next to them.

Each test provokes one fault of the issue and checks the defence (docs/security.md):
replies that cannot be taken fail one request, nothing is allocated before login beyond a few
KiB, absurd counts fail the one request, a client that stops reading is paused, shared memory is
named by its owner only, connection files are judged by ownership and by asking their port,
failed logins are slowed and their log lines counted, the bridge keeps no inherited descriptors.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pcluster
from pcluster import _core

from conftest import job_env
from rawwire import (MAGIC, PREFIX, REQUEST_TYPES, T_AUTH_REPLY, T_AUTH_REQUEST, T_CHALLENGE, T_ENGINE_REPLY, T_EXECUTE,
                     T_SHM_FRAME, T_SHM_RETURN, VERSION, Raw, error_text, frame, frame_id, record_requests, string,
                     with_id, with_string)


# --------------------------------------------------------------------------- processes
def info_of(job):
    return json.loads(job.path.read_text())


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def wait_until(cond, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


@pytest.fixture
def local_only(launcher):
    """Tests that look at the bridge's process (/proc) need it on this host."""
    if launcher.name != "mpirun":
        pytest.skip("the bridge runs on another host under this launcher")


def remote_python(code, env=None, timeout=120):
    """Runs `code` in a Python whose /dev/shm is not the job's (a mount namespace of its own):
    a client that does not share the host's shared memory, so every byte crosses the bridge."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to make a client that does not share /dev/shm")
    script = f"mount -t tmpfs none /dev/shm && exec {sys.executable} -c \"$0\""
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, code], capture_output=True, text=True,
                          timeout=timeout, env=job_env(env))


# --------------------------------------------------------------------------- 1. no reply size ends anything
HUGE_OUTPUT = """
import pcluster, sys
rc = pcluster.Client({path!r})
assert rc._conn.local == {local!r}
for what in ("print('x' * 20_000_000)", "raise ValueError('y' * 20_000_000)", "'z' * 20_000_000"):
    try:
        ar = rc[0].execute(what, silent=False, block=False)
        ar.get(60)
        print("ok", what[:5], len(ar.stdout or ''), len(str(ar.execute_result or '')))
    except pcluster.RemoteError as e:
        print("failed", what[:5], type(e).__name__, str(e)[:160].replace(chr(10), ' '))
print("after", rc[1].apply_sync(lambda: 41 + 1), rc[0].apply_sync(lambda: 6 * 7))
rc.close()
"""


def check_huge_output(out, job):
    assert out.count("\nok ") + out.count("\nfailed ") + out.startswith("ok ") + out.startswith("failed ") == 3, out
    for line in out.splitlines():
        if line.startswith("failed"):
            # A cap or a refusal that names what happened, never the job's end.
            assert "JobEnded" not in line and "went away" not in line, line
    assert "after 42 42" in out, out
    assert job.running(), job.describe()


def test_huge_output_error_and_result_fail_one_request_local(job, rc):
    """Issue: print('x'*20_000_000) on an engine dropped a local client's connection for good."""
    r = subprocess.run([sys.executable, "-c", HUGE_OUTPUT.format(path=str(job.path), local=True)],
                       capture_output=True, text=True, timeout=240, env=job_env())
    check_huge_output(r.stdout, job)
    assert rc[:].apply_sync(lambda: 1) == [1] * len(rc.ids)


def test_huge_output_error_and_result_fail_one_request_remote(job, rc):
    """Issue: the same through the bridge ended the whole job ('the controller went away')."""
    r = remote_python(HUGE_OUTPUT.format(path=str(job.path), local=False), timeout=240)
    check_huge_output(r.stdout + r.stderr, job)
    assert rc[:].apply_sync(lambda: 1) == [1] * len(rc.ids)


def test_request_over_the_frame_limit_fails_that_request_only(start_job):
    """A remote client's request over the job's --max-frame-gib: refused, the connection lives."""
    j = start_job(3, extra_args=["--max-frame-gib", "0.001"])  # ~1 MiB
    code = f"""
import pcluster
rc = pcluster.Client({str(j.path)!r})
assert not rc._conn.local
try:
    rc[0].push(dict(big=b'x' * (4 << 20)), block=True)
    print("pushed")
except pcluster.RemoteError as e:
    print("refused", type(e).__name__, e.evalue[:200])
rc[0].push(dict(small=b'y' * 1000), block=True)
print("after", len(rc[0].pull('small', block=True)))
"""
    r = remote_python(code)
    out = r.stdout + r.stderr
    assert "refused BadRequest" in out and "exceeds the maximum" in out, out
    assert "after 1000" in out, out
    assert j.running()


# --------------------------------------------------------------------------- 2. bounded before login
def test_claims_before_login_allocate_nothing(start_job, local_only):
    """Issue: a 100-byte login frame claiming 6 GiB made the bridge allocate and clear 6 GiB."""
    j = start_job(2)
    info = info_of(j)
    pid = info["bridge_pid"]
    before = rss_mib(pid)
    for claim in (6 << 30, 1 << 62, 5000):
        r = Raw(info, login=False)
        r.send(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 100, 0, claim) + bytes(76))
        assert r.closed_by_bridge(5), f"a login frame claiming {claim} bytes was not refused"
        r.close()
    assert rss_mib(pid) - before < 4
    # The right key still gets in.
    with pcluster.Client(str(j.path), timeout=10) as c:
        assert c[0].apply_sync(lambda: 5) == 5


@pytest.mark.sanitizer_unfit("bounds on resident memory: the sanitizer's shadow memory and quarantine are what they would measure")
def test_pending_logins_hold_a_few_kib_and_are_capped(start_job, local_only):
    """Connections that never log in: a few KiB each at most, at most PCLUSTER_MAX_PENDING_LOGINS
    of them (the oldest dropped), and a client with the key gets in and runs meanwhile."""
    j = start_job(2, env={"PCLUSTER_MAX_PENDING_LOGINS": "100"})
    info = info_of(j)
    pid = info["bridge_pid"]
    before = rss_mib(pid)
    socks = []
    try:
        for i in range(300):
            s = socket.create_connection((info["ip"], info["port"]), timeout=10)
            # Each starts a login frame of the largest size allowed and stops short of its end.
            s.sendall(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 200, 0, 4096 - 24) + bytes(4000))
            socks.append(s)
        time.sleep(0.5)
        grown = rss_mib(pid) - before
        assert grown < 100 * 12 / 1024 + 2, f"the bridge grew by {grown:.1f} MiB for 100 pending logins"
        closed = 0
        for s in socks[:150]:
            s.settimeout(0.5)
            try:
                while s.recv(1 << 16):
                    pass
                closed += 1
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except OSError:
                pass
        assert closed >= 150, f"only {closed} of the 150 oldest pending logins were dropped"
        t0 = time.monotonic()
        with pcluster.Client(str(j.path), timeout=10) as c:
            assert c[:].apply_sync(lambda: 1) == [1] * len(c.ids)
        assert time.monotonic() - t0 < 5
    finally:
        for s in socks:
            s.close()


def test_absurd_counts_in_every_message_fail_one_request(start_job, local_only):
    """Issue: after login, a frame claiming 1e9 targets made the bridge allocate 4.9 GB. Every
    request type with an absurd count, a shared-memory reference with an absurd path length, a
    return of an absurd number of segments, and message types clients may not send: refused one
    by one (or, without a request id, the connection closed), the bridge never grows."""
    j = start_job(2)
    info = info_of(j)
    pid = info["bridge_pid"]
    before = rss_mib(pid)
    r = Raw(info)
    for t in REQUEST_TYPES:
        for count in (10 ** 9, 1 << 62, (1 << 64) - 1):
            rid = r.next_id()
            # route: id, then the targets' count (and nothing of what it claims)
            r.send(frame(t, b"\x01" + struct.pack("<QQ", rid, count) + bytes(26)))
            type_, meta, data = r.reply()
            assert type_ == T_ENGINE_REPLY and frame_id(data) == rid
            assert "the bridge refused the request" in error_text(meta) and "claims" in error_text(meta)
    rid = r.next_id()
    r.send(frame(T_SHM_FRAME, b"\x01" + struct.pack("<QQ", rid, 1 << 40) + b"/dev/shm/x"))
    type_, meta, data = r.reply()
    assert frame_id(data) == rid and "claims" in error_text(meta)
    for t in (T_ENGINE_REPLY, 42, 43):  # replies a client may not send; they carry an id: that one fails
        rid = r.next_id()
        r.send(frame(t, b"\x01" + struct.pack("<QQ", rid, 1 << 40) + bytes(30)))
        type_, meta, data = r.reply()
        assert frame_id(data) == rid and "may not send" in error_text(meta)
    assert rss_mib(pid) - before < 8
    for t in (T_CHALLENGE, T_AUTH_REQUEST, T_AUTH_REPLY, 41, 44, 60, 61, 999):  # no request id: closed
        other = Raw(info)
        other.send(frame(t, b"\x01" + struct.pack("<QQ", other.next_id(), 1 << 40) + bytes(30)))
        assert other.closed_by_bridge(5), f"type {t}"
        other.close()
    # A return of 2^60 segments carries no request id: the connection closes, the job goes on.
    r.send(frame(T_SHM_RETURN, b"\x01" + struct.pack("<Q", 1 << 60) + bytes(16)))
    assert r.closed_by_bridge(5)
    r.close()
    # Before login: an auth_request whose probe path claims 2^62 bytes.
    r = Raw(info, login=False)
    r.send(frame(T_AUTH_REQUEST, b"\x01" + bytes(64) + struct.pack("<Q", 1 << 62) + bytes(40)))
    assert r.closed_by_bridge(5)
    r.close()
    assert rss_mib(pid) - before < 8
    with pcluster.Client(str(j.path), timeout=10) as c:
        assert c[:].apply_sync(lambda: 2) == [2] * len(c.ids)


# --------------------------------------------------------------------------- 3. budgets per client
T_TASK = 18


@pytest.mark.sanitizer_unfit("bounds on resident memory: the sanitizer's shadow memory and quarantine are what they would measure")
@pytest.mark.parametrize("kind", ["execute", "task"])
@pytest.mark.parametrize("gap", [0.005, 0], ids=["paced", "at_once"])
def test_a_client_that_stops_reading_is_paused(start_job, local_only, kind, gap):
    """Issue: a client that sends and never reads grew the bridge without bound (1.5 GB) and kept
    most of it after leaving. Now: over its reply budget the bridge stops reading its requests
    (they wait in its socket) and the controller sends none of those it has to the engines (it
    sends at most PCLUSTER_CLIENT_WINDOW per engine ahead of their replies); the bridge stays
    small, other clients are served, and once the client reads again every reply comes, and what
    it held goes back. Sent all at once, 600 requests for 1 MB replies each grew the bridge by
    569 MiB against a 64 MiB budget before the controller held them; direct requests and
    load-balanced tasks alike."""
    # Tasks already sent to an engine are its prefetch (up to 32 for short tasks): 8, as the window.
    j = start_job(3, env={"PCLUSTER_CLIENT_REPLY_BUFFER_MIB": "16", "PCLUSTER_CLIENT_WINDOW": "8",
                          "PCLUSTER_TASK_PREFETCH": "8"})
    info = info_of(j)
    pid = info["bridge_pid"]
    # A request whose reply is 1 MB (an execute result, a task's return value), as the real
    # client encodes it.
    if kind == "execute":
        recorded = record_requests(info, lambda c: c[0].execute("'r' * 1_000_000", silent=False, block=True))
        want = T_EXECUTE
    else:
        recorded = record_requests(info, lambda c: c.load_balanced_view().apply_sync(lambda: "r" * 1_000_000))
        want = T_TASK
    template = [f for f in recorded if PREFIX.unpack_from(f)[2] == want][0]
    base = rss_mib(pid)
    r = Raw(info)
    try:
        paused_and_resumed(j, r, template, pid, base, gap)
    finally:
        r.close()


def paused_and_resumed(j, r, template, pid, base, gap):
    peak = 0.0
    n = 600  # 600 MB of replies asked for, none read
    if gap:
        for sent in range(1, n + 1):
            r.send(with_id(template, r.next_id()))
            time.sleep(gap)
            if sent % 50 == 0:
                peak = max(peak, rss_mib(pid) - base)
    else:
        r.s.settimeout(30)
        r.s.sendall(b"".join(with_id(template, r.next_id()) for _ in range(n)))
        for _ in range(30):
            time.sleep(0.1)
            peak = max(peak, rss_mib(pid) - base)
    time.sleep(2)
    peak = max(peak, rss_mib(pid) - base)
    # The budget, the replies of what was already sent (8 per engine, 2 engines), what was on its
    # way to the bridge (the controller sends no more while 8 MiB of replies wait for the bridge),
    # and slack: measured 17 paced, 24 (executes) and 22-38 MiB (tasks) at once; 569 MiB at once
    # before the controller held a client.
    assert peak < 16 + 16 + 32, f"the bridge grew by {peak:.0f} MiB for one client that reads nothing"
    # Everyone else is served meanwhile.
    with pcluster.Client(str(j.path), timeout=10) as c:
        t0 = time.monotonic()
        assert c[1].apply_sync(lambda: 3) == 3
        assert c.load_balanced_view().apply_sync(lambda: 4) == 4
        assert time.monotonic() - t0 < 5
    # When it reads again, its requests go on and every reply comes, each a whole 1 MB value.
    got = 0
    while got < n:
        type_, _, whole = r.reply(60)
        if type_ == T_ENGINE_REPLY:
            assert len(whole) > 1_000_000, f"reply {got} is not the value asked for: {whole[:300]!r}"
            got += 1
    r.close()
    assert wait_until(lambda: rss_mib(pid) - base < 20, 10), f"the bridge still holds {rss_mib(pid) - base:.0f} MiB"


def reply_segments_mib():
    """What the controller's reply segments in /dev/shm hold (the job of the test is the only one)."""
    total = 0
    for p in Path("/dev/shm").glob("pcluster-s*"):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_blocks * 512
    return total / 2 ** 20


@pytest.mark.sanitizer_unfit("bounds on resident memory: the sanitizer's shadow memory and quarantine are what they would measure")
def test_a_local_client_that_stops_reading_fills_no_shared_memory(start_job, local_only):
    """A client on the job's host gets large replies as /dev/shm segments lent to it, with only
    their references through the bridge; a client that reads nothing left 600 MiB of segments
    for 300 requests for 1 MiB replies sent at once (the references sat in socket buffers). Now a
    client holds at most PCLUSTER_CLIENT_SHM_MIB lent; beyond, replies come through the bridge,
    where its reply budget holds it. Every reply still comes, and what it never gave back goes
    when it leaves."""
    j = start_job(2, env={"PCLUSTER_CLIENT_REPLY_BUFFER_MIB": "16", "PCLUSTER_CLIENT_WINDOW": "8",
                          "PCLUSTER_CLIENT_SHM_MIB": "32"})
    info = info_of(j)
    pid = info["bridge_pid"]
    # An execute result is cut to PCLUSTER_MAX_REPLY_TEXT (1 MiB): a reply just over the size
    # that goes by shared memory.
    recorded = record_requests(info, lambda c: c[0].execute("'r' * 2_000_000", silent=False, block=True))
    template = [f for f in recorded if PREFIX.unpack_from(f)[2] == T_EXECUTE][0]
    base, base_rss = reply_segments_mib(), rss_mib(pid)
    probe, token = make_probe(f"c1x{os.urandom(4).hex()}")
    with contextlib.ExitStack() as closing:
        closing.callback(os.unlink, probe)
        r = Raw(info, probe=probe.encode(), token=token)
        closing.callback(r.close)
        assert r.shm_ok
        n = 300
        r.s.settimeout(30)
        r.s.sendall(b"".join(with_id(template, r.next_id()) for _ in range(n)))
        peak = peak_rss = 0.0
        for _ in range(40):
            time.sleep(0.1)
            peak = max(peak, reply_segments_mib() - base)
            peak_rss = max(peak_rss, rss_mib(pid) - base_rss)
        assert peak < 32 + 8, f"{peak:.0f} MiB of reply segments for one client that reads nothing"
        # The budget, 8 replies sent ahead on engine 0, and slack.
        assert peak_rss < 16 + 16 + 32, f"the bridge grew by {peak_rss:.0f} MiB"
        by_shm = got = 0
        while got < n:
            type_, _, whole = r.reply(60)
            if type_ == T_SHM_FRAME:
                by_shm += 1
            elif type_ == T_ENGINE_REPLY:
                assert len(whole) > 1 << 20, f"reply {got} is not the value asked for: {whole[:300]!r}"
            got += type_ in (T_SHM_FRAME, T_ENGINE_REPLY)
        assert 10 <= by_shm < n, f"{by_shm} of {n} replies came in shared memory"
    # What it was lent and never gave back goes when it leaves.
    assert wait_until(lambda: reply_segments_mib() - base < 4, 10), f"{reply_segments_mib() - base:.0f} MiB left"


@pytest.mark.sanitizer_unfit("bounds on resident memory: the sanitizer's shadow memory and quarantine are what they would measure")
def test_requests_in_flight_are_bounded(start_job, local_only):
    """Issue: 1,500 requests of 1 MiB to a busy engine were all taken (bridge 1.5 GB, controller
    400 MB). Now the bridge takes about PCLUSTER_CLIENT_INFLIGHT_MIB of them until replies come."""
    j = start_job(2, env={"PCLUSTER_CLIENT_INFLIGHT_MIB": "32"})
    info = info_of(j)
    pid = info["bridge_pid"]
    small = "#" + "m" * 1000
    recorded = record_requests(info, lambda c: c[0].execute(small, block=True))
    template = with_string([f for f in recorded if PREFIX.unpack_from(f)[2] == T_EXECUTE][0], small,
                           "#" + "m" * (1 << 20))
    base = rss_mib(pid)
    with pcluster.Client(str(j.path), timeout=10) as busy:
        slow = busy[0].execute("import time; time.sleep(6)", block=False)
        time.sleep(0.5)
        r = Raw(info)
        r.s.setblocking(False)
        sent, pending = 0, b""
        deadline = time.monotonic() + 4
        while sent < 1500 and time.monotonic() < deadline:
            if not pending:
                pending = with_id(template, r.next_id())
            try:
                n = r.s.send(pending)
                pending = pending[n:]
                sent += not pending
            except BlockingIOError:
                time.sleep(0.02)
        taken_mib = sent * len(template) / 2 ** 20
        # What the kernel's socket buffers hold is not the bridge's: at most both maxima.
        kernel_mib = sum(int(Path(f"/proc/sys/net/ipv4/{f}").read_text().split()[2]) for f in ("tcp_rmem", "tcp_wmem")) / 2 ** 20
        assert taken_mib < 32 + kernel_mib + 4, f"{taken_mib:.0f} MiB of requests taken with 32 MiB allowed in flight"
        assert sent < 1500
        assert rss_mib(pid) - base < 40
        slow.get(30)
        # The engine answers, the client's requests flow again: all of them are answered.
        r.s.setblocking(True)
        if pending:
            r.send(pending)
        got = 0
        while got < sent + bool(pending):
            type_, _, _ = r.reply(60)
            got += type_ == T_ENGINE_REPLY
        r.close()


def test_the_bridges_own_control_actions_are_refused_from_a_client(job, rc):
    """hold_client, release_client and forget_client are the bridge's word about a client; from
    a client they fail that request (a client could otherwise hold itself for good)."""
    for action in (_core.control_action.hold_client, _core.control_action.release_client,
                   _core.control_action.forget_client):
        with pytest.raises(pcluster.RemoteError, match="bridge's own"):
            rc._control(action)
    assert rc[0].apply_sync(lambda: 5) == 5
    assert rc.load_balanced_view().apply_sync(lambda: 6) == 6


# --------------------------------------------------------------------------- 5. shared memory by owner only
def make_probe(owner):
    token = os.urandom(32)
    path = f"/dev/shm/pcluster-{owner}-{os.urandom(6).hex()}"
    with open(path, "wb") as f:
        f.write(token)
    os.chmod(path, 0o600)
    return path, token


def test_a_client_cannot_name_another_clients_segments(job, rc):
    """Issue: an authenticated client named another client's /dev/shm segment; when it left, the
    bridge deleted the segment and every large request of the victim failed from then on."""
    if not rc._conn.local:
        pytest.skip("the client does not share /dev/shm with the job")
    info = info_of(job)
    rc[0].push(dict(warm=b"v" * (2 << 20)), block=True)  # the victim's pool now keeps a segment
    mine = {p for p in os.listdir("/dev/shm") if p.startswith("pcluster-c")}
    owner = f"c{os.getpid()}x"
    victim = sorted(p for p in mine if p.startswith("pcluster-" + owner))
    assert victim, f"no segment of this process in /dev/shm: {sorted(mine)}"
    target = "/dev/shm/" + victim[0]
    # A local attacker with a probe of its own: may name its own segments, not the victim's.
    probe, token = make_probe(f"c1x{os.urandom(4).hex()}")
    try:
        r = Raw(info, probe=probe.encode(), token=token)
        assert r.shm_ok
        rid = r.next_id()
        r.send(frame(T_SHM_FRAME, b"\x01" + struct.pack("<Q", rid) + string(target.encode())
                     + struct.pack("<Q", 1 << 20) + b"\x01"))
        type_, meta, data = r.reply()
        assert frame_id(data) == rid and "not one of this client's own segments" in error_text(meta)
        r.close()
    finally:
        os.unlink(probe)
    # A client that offered no probe (remote) may name none at all.
    r = Raw(info)
    rid = r.next_id()
    r.send(frame(T_SHM_FRAME, b"\x01" + struct.pack("<Q", rid) + string(target.encode())
                 + struct.pack("<Q", 1 << 20) + b"\x01"))
    type_, meta, data = r.reply()
    assert frame_id(data) == rid and "proved at login" in error_text(meta)
    r.close()
    time.sleep(0.3)
    assert os.path.exists(target), "the victim's segment was removed"
    rc[0].push(dict(after=b"w" * (2 << 20)), block=True)
    assert rc[0].apply_sync(lambda: len(after)) == 2 << 20  # noqa: F821 - defined on the engine


def test_a_client_whose_segment_vanished_makes_a_new_one(job, rc):
    """Issue: once a client's kept segment was gone, every later request of >= 1 MiB failed."""
    if not rc._conn.local:
        pytest.skip("the client does not share /dev/shm with the job")
    rc[1].push(dict(first=b"a" * (3 << 20)), block=True)
    owner = f"pcluster-c{os.getpid()}x"
    gone = [p for p in os.listdir("/dev/shm") if p.startswith(owner)]
    assert gone
    for p in gone:
        os.unlink("/dev/shm/" + p)
    for i in range(3):
        rc[1].push(dict(again=bytes([i]) * (3 << 20)), block=True)
        assert rc[1].apply_sync(lambda: again[:1]) == bytes([i])  # noqa: F821 - defined on the engine


# --------------------------------------------------------------------------- 6. connection files
def test_a_connection_dir_of_another_user_or_open_to_others_is_refused(start_job, tmp_path):
    """Issue: a /tmp/.pcluster made by another user (mode 0777) was used without complaint."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory of another user")
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, 65534, 65534)
    os.chmod(d, 0o777)
    j = start_job(2, path=d / "conn.json", wait=False, recovery=False)
    assert j.wait_exit(30) not in (None, 0)
    assert re.search(rf"{re.escape(str(d))} is owned by uid 65534, not by you", j.log_text()), j.log_text()
    assert not (d / "conn.json").exists()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    j = start_job(2, path=open_dir / "conn.json", wait=False, recovery=False)
    assert j.wait_exit(30) not in (None, 0)
    assert f"{open_dir} is writable by others (mode 0777)" in j.log_text(), j.log_text()
    # A sticky directory like /tmp is fine: nobody can replace a file of ours in it.
    os.chmod(open_dir, 0o1777)
    j = start_job(2, path=open_dir / "conn.json")
    with pcluster.Client(str(j.path), timeout=10) as c:
        assert c[0].apply_sync(lambda: 9) == 9


def test_a_connection_file_of_another_user_is_refused_by_the_client(job, tmp_path):
    """Issue: a file swapped in by another user sent root's Client() to a port of their choosing."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file of another user")
    if not hasattr(_core, "check_connection_file"):
        pytest.fail("the client does not check connection files: bind protocol::check_private_file as "
                    "_core.check_connection_file and call it in client._read_connection_file")
    theirs = tmp_path / "theirs.json"
    theirs.write_text(job.path.read_text())
    os.chown(theirs, 65534, 65534)
    with pytest.raises(pcluster.NoJobError, match="owned by uid 65534, not by you"):
        pcluster.Client(str(theirs), timeout=2)
    writable = tmp_path / "writable.json"
    writable.write_text(job.path.read_text())
    os.chmod(writable, 0o622)
    with pytest.raises(pcluster.NoJobError, match="writable by others"):
        pcluster.Client(str(writable), timeout=2)
    os.chmod(writable, 0o600)
    with pcluster.Client(str(writable), timeout=10) as c:
        assert c.ids


def test_a_stale_file_is_judged_by_its_port_not_its_pid(start_job, tmp_path):
    """Issue: a stale file whose bridge_pid now belonged to an unrelated process blocked new jobs;
    and a running job's file must still be refused."""
    path = tmp_path / "conn.json"
    first = start_job(2, path=path)
    info = info_of(first)
    # A second job on the same file: the first answers there with its key.
    second = start_job(2, path=path, wait=False, recovery=False)
    assert second.wait_exit(40) not in (None, 0)
    assert "belongs to a running job" in second.log_text(), second.log_text()
    assert info_of(first) == info
    first.stop()
    # Stale: nobody listens at its port, but its bridge_pid is alive (this very process).
    stale = dict(info, bridge_pid=os.getpid())
    path.write_text(json.dumps(stale))
    os.chmod(path, 0o600)
    third = start_job(2, path=path)
    assert "replacing stale connection file" in third.log_text()
    with pcluster.Client(str(path), timeout=10) as c:
        assert c[0].apply_sync(lambda: 4) == 4


# --------------------------------------------------------------------------- 7. throttled, quiet, no inherited fds
def test_failed_logins_are_slowed_and_quiet(start_job, local_only):
    """Issue: wrong keys were unthrottled and each printed a line on mpirun's terminal (17,303
    lines in 5 s). Now each failure from an address waits longer, lines are counted, and a client
    with the key gets in at once meanwhile."""
    j = start_job(2)
    info = info_of(j)
    attempts = 0
    stop = threading.Event()

    def flood():
        nonlocal attempts
        wrong = ("0" if info["key"][0] != "0" else "1") + info["key"][1:]
        while not stop.is_set():
            try:
                Raw(info, key=wrong).close()
            except (PermissionError, OSError, EOFError):
                pass
            attempts += 1

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        with pcluster.Client(str(j.path), timeout=10) as c:
            assert c[0].apply_sync(lambda: 1) == 1
        assert time.monotonic() - t0 < 3
        time.sleep(3.5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert attempts < 400, f"{attempts} wrong keys tried in 5 s"
    lines = [l for l in j.log_text().splitlines() if "authentication" in l or "failed" in l]
    assert len(lines) <= 12, "\n".join(lines[:40])


def test_the_bridge_keeps_no_inherited_descriptors(job, local_only):
    """Issue: the bridge inherited rank 0's Open MPI listening sockets (0.0.0.0:1025)."""
    info = info_of(job)
    pid = info["bridge_pid"]
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            m = re.match(r"socket:\[(\d+)\]", target)
            if m:
                inodes.add(m.group(1))
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    listening.append(int(cols[1].split(":")[1], 16))
    assert listening == [info["port"]], f"the bridge listens on {listening}, its port is {info['port']}"


# --------------------------------------------------------------------------- 10. soak and load, fast variants
@pytest.mark.sanitizer_unfit("memory and round-trip bounds of the soak scripts: under the sanitizers they would measure its costs")
@pytest.mark.parametrize("script", ["soak_tasks", "soak_clients", "soak_flood", "soak_kill"])
def test_soak_fast_variant(script, local_only, tmp_path):
    """The soak and load scripts of docs/reliability.md, in their short form: 60,000 tasks with
    flat memory; 8 clients of every operation, all results right; 500 idle sockets and a login
    flood with the round trip within 2x; a client killed mid-transfer of 500 MB unnoticed."""
    from conftest import BUILD

    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "bench" / f"{script}.py"), "--fast",
                        "--build-dir", str(BUILD), "--json", str(out), "--timeout", "400"],
                       capture_output=True, text=True, timeout=450, env=job_env())
    assert "SOAK OK" in r.stdout, r.stdout[-4000:] + r.stderr[-4000:]
    assert json.loads(out.read_text())["ok"]
