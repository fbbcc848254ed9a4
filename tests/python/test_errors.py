"""Bad inputs, remote failures, hostile peers and job life cycle: every one ends in a clear error
and leaves the job serving."""

import contextlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest

import pcluster
from conftest import EXIT_TIMEOUT, SrunLauncher, job_env, pcluster_exe

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDS = [0, 1, 2, 3]

# Frame prefix: u32 magic, u16 version, u16 type, u32 meta_len, u32 nbufs, u64 body_len.
PREFIX = struct.Struct("<IHHIIQ")
MAGIC = 0x314C4350
VERSION = pcluster._core.protocol_version
T_CHALLENGE, T_AUTH_REQUEST, T_EXECUTE_REQUEST = 1, 2, 10


def whoami():
    from pcluster.engine import engine_id

    return engine_id


def assert_serving(rc):
    """The job answers a normal request on every engine."""
    assert rc[:].apply_sync(whoami) == IDS


def assert_serving_old_and_new(job, rc):
    """The existing client still gets answers, and a new client can log in and get them too."""
    assert_serving(rc)
    assert_new_client_served(job)


def assert_new_client_served(job):
    with pcluster.Client(str(job.path)) as c:
        assert_serving(c)


# --------------------------------------------------------------------------- remote errors
def test_remote_error_single_engine_execute(rc):
    code = "s_before = 1\ndef s_bad():\n    raise ValueError('boom 42')\ns_bad()\n"
    with pytest.raises(pcluster.RemoteError) as ei:
        rc[0].execute(code, block=True)
    e = ei.value
    assert not isinstance(e, pcluster.CompositeError)
    assert e.ename == "ValueError"
    assert e.evalue == "boom 42"
    assert e.engine_info["engine_id"] == 0
    assert "s_bad" in e.traceback
    # The user's own line is in the traceback, as ipyparallel shows it.
    assert "raise ValueError('boom 42')" in e.traceback
    rendered = e._render_traceback_()
    assert isinstance(rendered, list) and all(isinstance(line, str) for line in rendered)
    assert any("ValueError" in line for line in rendered)
    # code before the failing line ran; the engine goes on
    assert rc[0].pull("s_before", block=True) == 1


def test_remote_error_single_engine_apply(rc):
    def fails(x):
        return 1 / x  # the user's line

    with pytest.raises(pcluster.RemoteError) as ei:
        rc[2].apply_sync(fails, 0)
    e = ei.value
    assert e.ename == "ZeroDivisionError"
    assert "division by zero" in e.evalue
    assert e.engine_id == 2
    assert "fails" in e.traceback
    assert "return 1 / x  # the user's line" in e.traceback
    # no frames of pcluster's engine machinery in what the user sees
    assert "_kernel" not in e.traceback
    assert rc[2].apply_sync(fails, 4) == 0.25


def test_composite_error_all_engines(rc):
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].apply_sync(lambda: 1 / 0)
    e = ei.value
    assert isinstance(e, pcluster.RemoteError)
    assert len(e.elist) == 4
    assert sorted(x.engine_info["engine_id"] for x in e.elist) == IDS
    assert all(x.ename == "ZeroDivisionError" for x in e.elist)
    assert "4 of 4" in str(e)
    assert any("ZeroDivisionError" in line for line in e._render_traceback_())
    with pytest.raises(pcluster.RemoteError) as first:
        e.raise_exception()
    assert first.value.ename == "ZeroDivisionError"
    with pytest.raises(pcluster.RemoteError) as third:
        e.raise_exception(2)
    assert third.value is e.elist[2]
    assert_serving(rc)


def test_composite_error_some_engines(rc):
    def maybe_fail():
        if whoami() == 2:
            raise KeyError("only two")
        return "fine"

    ar = rc[:].apply_async(maybe_fail)
    assert ar.wait(30)
    assert not ar.successful()
    assert [m["status"] for m in ar.metadata] == ["ok", "ok", "error", "ok"]
    exc = ar.exception()
    assert isinstance(exc, pcluster.CompositeError)
    assert len(exc.elist) == 1
    assert exc.elist[0].engine_id == 2 and exc.elist[0].ename == "KeyError"
    with pytest.raises(pcluster.CompositeError):
        ar.get()
    with pytest.raises(pcluster.CompositeError):
        ar.r


def test_map_error_is_composite(rc):
    def inv(x):
        return 1 / x

    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].map_sync(inv, [1, 2, 0, 4, 5, 6, 7, 8])  # 0 is in engine 1's block
    assert [x.engine_id for x in ei.value.elist] == [1]
    assert rc[:].map_sync(inv, [1, 2, 4, 8]) == [1.0, 0.5, 0.25, 0.125]


@pytest.mark.parametrize(
    "code, ename",
    [
        ("import sys; sys.exit()", "SystemExit"),
        ("import sys; sys.exit(3)", "SystemExit"),
        ("raise SystemExit('bye')", "SystemExit"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("raise GeneratorExit", "GeneratorExit"),
        ("exit()", "SystemExit"),
        ("def f(): f()\nf()", "RecursionError"),
        ("raise MemoryError('pretend')", "MemoryError"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nimport time\ntime.sleep(5)", "KeyboardInterrupt"),
    ],
)
def test_engine_survives(rc, code, ename):
    rc[:].push(dict(s_alive_marker=ename), block=True)
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].execute(code, block=True)
    assert [x.ename for x in ei.value.elist] == [ename] * 4
    # the engines live on, with their namespaces
    assert rc[:]["s_alive_marker"] == [ename] * 4
    assert_serving(rc)
    with pytest.raises(pcluster.RemoteError) as ei1:
        rc[3].execute(code, block=True)
    assert ei1.value.ename == ename
    assert rc[3].apply_sync(whoami) == 3


def test_exception_that_cannot_be_printed(rc):
    code = "class SUnprintable(Exception):\n    def __str__(self):\n        raise RuntimeError('no str')\nraise SUnprintable()"
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].execute(code, block=True)
    assert len(ei.value.elist) == 4
    assert_serving(rc)


def test_background_thread_error_does_not_matter(rc):
    rc[:].execute("import threading\nt = threading.Thread(target=lambda: 1 / 0)\nt.start()\nt.join()", block=True)
    assert_serving(rc)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_user_replaces_std_streams(rc, stream):
    """Python allows sys.stdout/sys.stderr to be None (print then does nothing); the engine's
    requests must keep working, not fail on pcluster's own flush of the stream."""
    try:
        rc[:].execute(f"import sys\nsys.{stream} = None", block=True)
        assert rc[:].apply_sync(lambda: "works") == ["works"] * 4
        assert rc[:].apply_sync(lambda: print("into the void") or 1) == [1] * 4
    finally:
        # the code of a request runs before its reply is made: this restores the stream either way
        try:
            rc[:].execute(f"import sys\nsys.{stream} = sys.__{stream}__", block=True)
        except pcluster.RemoteError:
            pass
    assert_serving(rc)


def test_pull_undefined(rc):
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].pull("s_never_defined_anywhere", block=True)
    e = ei.value
    assert len(e.elist) == 4
    assert [x.ename for x in e.elist] == ["NameError"] * 4
    assert all("s_never_defined_anywhere" in x.evalue for x in e.elist)
    with pytest.raises(pcluster.RemoteError) as e1:
        rc[1].pull("s_never_defined_anywhere", block=True)
    assert e1.value.ename == "NameError"
    with pytest.raises(pcluster.CompositeError):
        rc[:].gather("s_never_defined_anywhere", block=True)
    with pytest.raises(pcluster.CompositeError):
        rc[:]["s_never_defined_anywhere"]
    assert_serving(rc)


def test_syntax_error_in_execute(rc):
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].execute("def (:", block=True)
    assert [x.ename for x in ei.value.elist] == ["SyntaxError"] * 4
    assert_serving(rc)


# --------------------------------------------------------------------------- pickling
def _gen():
    yield 1


@pytest.mark.parametrize("bad", [threading.Lock, lambda: _gen(), lambda: socket.socket()], ids=["lock", "generator", "socket"])
def test_unpicklable_argument_raises_before_send(rc, bad):
    obj = bad()
    try:
        with pytest.raises(TypeError):
            rc[:].apply_sync(lambda x: 1, obj)
        with pytest.raises(TypeError):
            rc[0].apply_async(lambda x: 1, obj)
        with pytest.raises(TypeError):
            rc[:].push(dict(s_ok_part=1, s_bad_part=obj), block=True)
        with pytest.raises(TypeError):
            rc[:].map_sync(lambda x: x, [1, obj, 3, 4])
        with pytest.raises(TypeError):
            rc[:].scatter("s_bad_scatter", [obj] * 8, block=True)
        with pytest.raises(TypeError):
            rc[:]["s_bad_item"] = obj
        with pytest.raises(TypeError):
            rc[:].apply_sync(lambda: obj)  # captured in a closure
    finally:
        if hasattr(obj, "close"):
            obj.close()
    # Nothing was sent: not even the picklable half of the failed push arrived.
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].pull("s_ok_part", block=True)
    assert [x.ename for x in ei.value.elist] == ["NameError"] * 4
    assert_serving(rc)


def test_unpicklable_result(rc):
    with pytest.raises(pcluster.CompositeError) as ei:
        rc[:].apply_sync(lambda: threading.Lock())
    assert [x.ename for x in ei.value.elist] == ["TypeError"] * 4
    rc[:].execute("import threading\ns_lock = threading.Lock()", block=True)
    with pytest.raises(pcluster.RemoteError) as e1:
        rc[0].pull("s_lock", block=True)
    assert e1.value.ename == "TypeError"
    assert_serving(rc)


def test_result_not_loadable_on_client(rc):
    # A class that exists only in an engine's namespace: whatever the client raises, it raises it
    # for this request alone and the connection goes on.
    rc[0].execute("class SOnlyOnEngine:\n    pass\ns_obj = SOnlyOnEngine()", block=True)
    try:
        rc[0].pull("s_obj", block=True)
    except Exception:
        pass
    assert_serving(rc)


# --------------------------------------------------------------------------- connecting
def test_wrong_key(job, tmp_path):
    info = json.loads(job.path.read_text())
    key = info["key"]
    info["key"] = ("0" if key[0] != "0" else "1") + key[1:]
    copy = tmp_path / "stale-connection.json"
    copy.write_text(json.dumps(info))
    with pytest.raises(pcluster.AuthenticationError) as ei:
        pcluster.Client(str(copy), timeout=10)
    assert isinstance(ei.value, PermissionError)
    assert str(copy) in str(ei.value)
    assert_new_client_served(job)


def test_no_job(tmp_path):
    path = tmp_path / "nothing-here.json"
    t0 = time.monotonic()
    with pytest.raises(pcluster.NoJobError) as ei:
        pcluster.Client(str(path), timeout=0.5)
    assert time.monotonic() - t0 < 10  # bounded by the timeout, not a hang
    assert isinstance(ei.value, TimeoutError)
    assert str(path) in str(ei.value)


def test_no_job_default_path(tmp_path, monkeypatch):
    monkeypatch.delenv("PCLUSTER_CONNECTION_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = os.path.join(str(tmp_path), ".pcluster", "connection.json")
    assert pcluster.default_connection_file() == expected
    with pytest.raises(pcluster.NoJobError) as ei:
        pcluster.Client(timeout=0.5)
    assert expected in str(ei.value)


def test_stale_file_nobody_listening(tmp_path, job):
    info = json.loads(job.path.read_text())
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    info["port"] = s.getsockname()[1]  # bound, never listening: connections are refused
    stale = tmp_path / "dead.json"
    stale.write_text(json.dumps(info))
    try:
        with pytest.raises(pcluster.NoJobError) as ei:
            pcluster.Client(str(stale), timeout=2)
        assert str(stale) in str(ei.value)
    finally:
        s.close()


def test_garbage_connection_file(tmp_path):
    p = tmp_path / "garbage.json"
    p.write_bytes(b"\x00\xffnot json")
    with pytest.raises(pcluster.NoJobError) as ei:
        pcluster.Client(str(p), timeout=0.5)
    assert str(p) in str(ei.value)


class FakeBridge:
    """A TCP server that plays a broken job: behaviour(conn) is run for each connection."""

    def __init__(self, behaviour):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.conns = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.conns.append(conn)
        self.behaviour(conn)

    def connection_file(self, path):
        path.write_text(json.dumps({"ip": "127.0.0.1", "port": self.port, "key": "ab" * 32, "engines": 4}))
        return str(path)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    "behaviour",
    [
        pytest.param(lambda c: c.sendall(PREFIX.pack(MAGIC, 2, T_CHALLENGE, 0, 0, 0)), id="version-2"),
        pytest.param(lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"), id="not-pcluster"),
        pytest.param(lambda c: c.close(), id="closes"),
        pytest.param(lambda c: None, id="silent"),
    ],
)
def test_client_against_broken_server(tmp_path, behaviour):
    fake = FakeBridge(behaviour)
    path = fake.connection_file(tmp_path / "fake.json")
    try:
        t0 = time.monotonic()
        with pytest.raises(pcluster.PclusterError) as ei:
            pcluster.Client(path, timeout=2)
        assert time.monotonic() - t0 < 30
        assert path in str(ei.value)
    finally:
        fake.close()


def test_version_mismatch_message(tmp_path):
    fake = FakeBridge(lambda c: c.sendall(PREFIX.pack(MAGIC, 2, T_CHALLENGE, 0, 0, 0)))
    path = fake.connection_file(tmp_path / "fake.json")
    try:
        with pytest.raises(pcluster.NoJobError) as ei:
            pcluster.Client(path, timeout=5)
        assert "version" in str(ei.value)
    finally:
        fake.close()


# --------------------------------------------------------------------------- hostile raw peers
def connect_raw(job):
    info = json.loads(job.path.read_text())
    s = socket.create_connection((info["ip"], info["port"]), timeout=10)
    return s


def recv_exactly(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def read_challenge(s):
    magic, version, typ, meta_len, nbufs, body_len = PREFIX.unpack(recv_exactly(s, PREFIX.size))
    assert (magic, version, typ) == (MAGIC, VERSION, T_CHALLENGE)
    assert body_len >= meta_len + 8 * nbufs
    recv_exactly(s, body_len)


def assert_closed_by_peer(s, timeout=15):
    """The bridge closes the connection: recv reports EOF (or a reset) within timeout seconds."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if s.recv(65536) == b"":
                return
    except (ConnectionResetError, BrokenPipeError):
        return
    except socket.timeout:
        pass
    pytest.fail(f"the bridge kept the connection open for {timeout} s")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xde\xad\xbe\xef" * 6, id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
        pytest.param(PREFIX.pack(0x12345678, VERSION, T_AUTH_REQUEST, 0, 0, 0), id="bad-magic"),
        pytest.param(PREFIX.pack(MAGIC, 2, T_AUTH_REQUEST, 0, 0, 0), id="version-2"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 0, 0, 1 << 62), id="body-2^62"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 0, 0, 1 << 20), id="oversize-login"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 1 << 30, 0, 1 << 30), id="meta-1GiB"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 0, 0xFFFFFFFF, 8), id="nbufs-huge"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 16, 0, 8), id="body-shorter-than-meta"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 8, 0, 8) + b"\xff" * 8, id="bad-auth-meta"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, T_EXECUTE_REQUEST, 8, 0, 8) + b"\x00" * 8, id="request-before-login"),
        pytest.param(PREFIX.pack(MAGIC, VERSION, 999, 0, 0, 0), id="unknown-type"),
    ],
)
def test_bridge_closes_bad_peer(job, rc, payload):
    s = connect_raw(job)
    try:
        read_challenge(s)
        s.sendall(payload)
        assert_closed_by_peer(s)
    finally:
        s.close()
    assert_serving_old_and_new(job, rc)


def test_bridge_closes_garbage_without_reading_challenge(job, rc):
    s = connect_raw(job)
    try:
        s.sendall(os.urandom(4096))
        assert_closed_by_peer(s)
    finally:
        s.close()
    assert_serving(rc)


def test_peer_dies_mid_message(job, rc):
    for cut in (3, 24, 30):
        s = connect_raw(job)
        read_challenge(s)
        frame = PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 64, 0, 64) + b"\x01" * 64
        s.sendall(frame[:cut])
        s.close()
    # and one that dies with the prefix complete and the body half sent
    s = connect_raw(job)
    s.sendall(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 100, 0, 100) + b"x" * 10)
    s.close()
    assert_serving_old_and_new(job, rc)


def test_stalled_peer_does_not_block_others(job, rc):
    """A half-sent frame sitting on the bridge does not stop other clients."""
    s = connect_raw(job)
    try:
        read_challenge(s)
        s.sendall(PREFIX.pack(MAGIC, VERSION, T_AUTH_REQUEST, 100, 0, 100)[:10])
        assert_new_client_served(job)
        assert_serving(rc)
    finally:
        s.close()


def test_unauthenticated_peer_is_dropped(job, rc):
    """A connection that never logs in is closed by the bridge (after its login timeout)."""
    s = connect_raw(job)
    try:
        read_challenge(s)
        assert_closed_by_peer(s, timeout=40)
    finally:
        s.close()
    assert_serving(rc)


def test_authenticated_client_killed_mid_request(job, rc, tmp_path):
    """A client process that dies in the middle of sending a large request, and one that dies
    with requests in flight: the job drops their half frames and orphan replies and serves on."""
    script = tmp_path / "dying_client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys, threading, time
            import numpy as np
            import pcluster
            rc = pcluster.Client({str(job.path)!r})
            mode = sys.argv[1]
            if mode == "mid-send":
                big = np.ones(100_000_000)  # 800 MB: still being written when the process dies
                threading.Thread(target=lambda: rc[:].push(dict(s_half=big), block=False), daemon=True).start()
                time.sleep(0.05)
            else:
                for i in range(5):
                    rc[:].apply_async(lambda: __import__("time").sleep(0.2) or "orphan")
                rc[:].push(dict(s_orphan_sent=1), block=False)
            print("dying", flush=True)
            os._exit(0)
            """
        )
    )
    for mode in ("mid-send", "in-flight"):
        p = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=60, env=job_env())
        assert "dying" in p.stdout, p.stderr
    assert_serving(rc)
    with pcluster.Client(str(job.path)) as c:
        assert_serving(c)
        # the 800 MB push cut short must not have reached any engine in part: each engine has
        # either nothing or (had the send finished before the process died) the whole array
        def half_state():
            a = globals().get("s_half")
            return "absent" if a is None else ("whole" if a.shape == (100_000_000,) and a.sum() == 1e8 else "partial")

        states = c[:].apply_sync(half_state)
        assert len(set(states)) == 1 and states[0] in ("absent", "whole"), states
        c[:].execute("s_half = None", block=True)


# --------------------------------------------------------------------------- the pcluster program
def test_help():
    p = subprocess.run([pcluster_exe(), "--help"], capture_output=True, text=True, timeout=60, env=job_env())
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    for opt in ("--connection-file", "-f", "--ip", "--port", "--log-level", "--help"):
        assert opt in out
    assert "mpirun" in out


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--log-level", "loud"], "log-level"),
        (["--port", "70000"], "port"),
        (["--no-such-option"], "no-such-option"),
    ],
)
def test_bad_options(args, expect):
    p = subprocess.run([pcluster_exe(), *args], capture_output=True, text=True, timeout=60, env=job_env())
    assert p.returncode != 0
    assert expect in p.stdout + p.stderr


def test_one_rank_fails_clearly(start_job):
    # Without recovery: with it, mpirun's exit status says nothing (it is 0 whatever ranks did).
    j = start_job(1, wait=False, recovery=False)
    code = j.wait_exit(60)
    assert code is not None, f"a one-rank job did not give up\n{j.describe()}"
    assert code != 0, j.describe()
    assert "at least 2" in j.log_text(), j.describe()
    assert not j.path.exists()


def test_connection_file_contents(job):
    st = os.stat(job.path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    info = json.loads(job.path.read_text())
    assert len(info["key"]) == 64 and all(c in "0123456789abcdef" for c in info["key"].lower())
    assert isinstance(info["port"], int) and 0 < info["port"] < 65536
    assert info["ip"] == "127.0.0.1"
    assert info["engines"] == 4
    os.kill(info["bridge_pid"], 0)  # the bridge is alive
    log = job.log_text()
    assert "4 engines ready" in log
    assert "controller on rank 0" in log
    assert f"connection file {job.path}" in log


def test_two_jobs_have_different_keys(job, start_job):
    other = start_job(3)
    a = json.loads(job.path.read_text())
    b = json.loads(other.path.read_text())
    assert a["key"] != b["key"]
    assert a["port"] != b["port"]
    with pcluster.Client(str(other.path)) as c:
        assert c.ids == [0, 1]
        assert c[:].apply_sync(whoami) == [0, 1]


def test_second_job_same_connection_file(job, start_job):
    before = job.path.read_text()
    second = start_job(3, path=job.path, wait=False, recovery=False)  # recovery makes mpirun exit 0 whatever happened
    code = second.wait_exit(60)
    assert code is not None, f"the second job did not give up\n{second.describe()}"
    assert code != 0
    log = second.log_text()
    assert str(job.path) in log, log
    assert "running job" in log, log
    # the first job is untouched
    assert job.running()
    assert job.path.read_text() == before
    assert_new_client_served(job)


def test_port_in_use(job, start_job):
    port = json.loads(job.path.read_text())["port"]
    second = start_job(3, extra_args=["--port", str(port)], wait=False, recovery=False)  # recovery makes mpirun exit 0 whatever happened
    code = second.wait_exit(60)
    assert code is not None, f"the job did not give up\n{second.describe()}"
    assert code != 0
    assert str(port) in second.log_text()
    assert not second.path.exists()


def test_bad_ip(start_job):
    j = start_job(3, extra_args=["--ip", "not-an-address"], wait=False, recovery=False)  # recovery makes mpirun exit 0 whatever happened
    code = j.wait_exit(60)
    assert code is not None, f"the job did not give up\n{j.describe()}"
    assert code != 0
    assert "not-an-address" in j.log_text()


def test_unwritable_connection_file(start_job, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    j = start_job(3, path=blocker / "conn.json", wait=False, recovery=False)  # recovery makes mpirun exit 0 whatever happened
    code = j.wait_exit(60)
    assert code is not None, f"the job did not give up\n{j.describe()}"
    assert code != 0
    assert str(blocker) in j.log_text()


def test_port_ip_options_and_new_directory(start_job, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    path = tmp_path / "new" / "dir" / "conn.json"
    j = start_job(3, path=path, extra_args=["--ip", "0.0.0.0", "--port", str(port), "--log-level", "warn"])
    info = json.loads(path.read_text())
    # Listening on every interface, the file names an address clients can connect to (never the
    # wildcard, nor a host name that may not resolve where the client runs), loopback last.
    assert info["port"] == port and info["listen"] == "0.0.0.0"
    assert info["ip"] not in ("0.0.0.0", "") and info["ip"] == info["addresses"][0]
    socket.inet_aton(info["ip"])
    assert "127.0.0.1" in info["addresses"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) & 0o077 == 0
    with pcluster.Client(str(path)) as c:
        assert c[:].apply_sync(whoami) == [0, 1]
    assert j.running()


def test_slurm_job_whose_submit_host_resolves_to_loopback_listens_everywhere(start_job, launcher, tmp_path):
    """Inside a SLURM job the bridge listens on the address that reaches the submit (login) host;
    a submit host that resolves to loopback on the node (Debian's 127.0.1.1 line) must not make
    it listen on loopback, where the login node cannot reach it."""
    if isinstance(launcher, SrunLauncher):
        pytest.skip("srun sets SLURM_SUBMIT_HOST itself: this case is the mpirun launcher's")
    path = tmp_path / "conn.json"
    start_job(3, path=path, env={"SLURM_JOB_ID": "424242", "SLURM_SUBMIT_HOST": "localhost"})
    info = json.loads(path.read_text())
    assert info["listen"] == "0.0.0.0", info
    assert info["ip"] == info["addresses"][0] and "127.0.0.1" in info["addresses"]
    with pcluster.Client(str(path)) as c:
        assert c[:].apply_sync(whoami) == [0, 1]


def test_stale_connection_file_is_replaced(start_job, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / "stale.json"
    path.write_text(json.dumps({"ip": "127.0.0.1", "port": 1, "key": "00" * 32, "bridge_pid": dead.pid}))
    start_job(3, path=path)
    info = json.loads(path.read_text())
    assert info["bridge_pid"] != dead.pid
    with pcluster.Client(str(path)) as c:
        assert c[:].apply_sync(whoami) == [0, 1]


# --------------------------------------------------------------------------- ending a job
@contextlib.contextmanager
def two_clients(j):
    """Two clients of job j, closed at the end whatever happened."""
    c = pcluster.Client(str(j.path))
    other = pcluster.Client(str(j.path))
    try:
        yield c, other
    finally:
        other.close()
        c.close()


def test_shutdown(start_job):
    j = start_job(3)
    with two_clients(j) as (c, other):
        c[:].push(dict(s_x=1), block=True)
        assert other[:]["s_x"] == [1, 1]
        c.shutdown(timeout=EXIT_TIMEOUT)
        # shutdown() returns once the job has ended: the connection file is already gone
        assert not j.path.exists()
        assert j.wait_exit(EXIT_TIMEOUT) == 0, j.describe()
        # the other client learns that the job ended, without hanging
        with pytest.raises(pcluster.JobEndedError):
            other[:].apply_sync(lambda: 1)
        with pytest.raises(pcluster.JobEndedError):
            c[:].apply_sync(lambda: 1)
        with pytest.raises(pcluster.NoJobError):
            pcluster.Client(str(j.path), timeout=0.5)


def test_shutdown_waits_for_queued_work(start_job):
    j = start_job(3)
    with two_clients(j) as (c, other):
        pending = other[:].apply_async(lambda: (print("started"), __import__("time").sleep(1.5), "done")[2])
        # Running in the job, not only queued in `other`'s writer: requests of two clients have
        # no order between them until they reach the job. A request running for more than 0.5 s
        # streams what it printed.
        deadline = time.monotonic() + 10
        while "started" not in "".join(pending.stdout) and time.monotonic() < deadline:
            time.sleep(0.01)
        c.shutdown(timeout=EXIT_TIMEOUT)
        assert pending.get(EXIT_TIMEOUT) == ["done", "done"]
        assert j.wait_exit(EXIT_TIMEOUT) == 0, j.describe()
        assert not j.path.exists()


def test_ctrl_c_ends_job(start_job):
    j = start_job(3)
    c = pcluster.Client(str(j.path))
    try:
        assert c[:].apply_sync(whoami) == [0, 1]
        os.killpg(j.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert j.wait_exit(EXIT_TIMEOUT) is not None, j.describe()
        deadline = time.monotonic() + 10
        while j.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not j.path.exists(), j.describe()
        with pytest.raises(pcluster.JobEndedError, match="stopped by a signal"):
            c[:].apply_sync(lambda: 1)
    finally:
        c.close()


def test_engine_dying_without_recovery_ends_job_and_says_why(start_job):
    """Started without recovery (plain mpirun), an engine's death ends the job: the client gets
    the engine's own error, then learns which engine died and how, and why the job ended; the
    job ends and removes its connection file."""
    j = start_job(3, recovery=False)
    c = pcluster.Client(str(j.path))
    try:
        ar = c[0].execute("import os; os._exit(1)", block=False)
        with pytest.raises(pcluster.EngineDied, match=r"engine 0 \(.*pid \d+\) exited with code 1"):
            ar.get(60)
        assert j.wait_exit(60) is not None, j.describe()  # mpirun ends the job a moment later
        deadline = time.monotonic() + 10  # the client reads the end of the connection a moment later
        while not c._conn.closed and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(pcluster.JobEndedError, match="engine 0 .*exited with code 1.*--enable-recovery"):
            c[1].apply_sync(lambda: 1)
        deadline = time.monotonic() + 10
        while j.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not j.path.exists(), j.describe()
    finally:
        c.close()


# --------------------------------------------------------------------------- crafted layouts
def test_request_with_empty_parts_does_not_harm_the_job(rc):
    """A request whose every part has no buffers (legal, if odd) must be served, not crash rank 0."""
    from pcluster import _core

    for targets in ([], [1, 3], [2]):
        msg = _core.execute_request()
        msg.code = "empty_parts_ok = True"
        msg.r.id = (rc._conn.client_no << 32) | (0xFFFF0000 + len(targets))
        msg.r.targets = targets
        n = len(targets) or len(IDS)
        msg.r.part_bufs = [0] * n
        rc._conn.send(msg, [], True, msg.r.id, list(msg.r.targets), 0, n, 0)
        outcome = rc._conn.wait_take(msg.r.id, 30)
        assert outcome is not None, "no reply within 30 s"
        replies, _ = outcome
        assert len(replies) == n and all(r.ok for r in replies)
    assert_serving(rc)


def test_layout_that_does_not_add_up_is_refused(rc):
    from pcluster import _core

    msg = _core.push_request()
    msg.r.id = (rc._conn.client_no << 32) | 0xFFFF1000
    msg.r.shared_bufs = 3  # but no buffers are sent
    rc._conn.send(msg, [], True, msg.r.id, [], 0, len(IDS), 0)
    outcome = rc._conn.wait_take(msg.r.id, 30)
    assert outcome is not None, "no reply within 30 s"
    (reply,), _ = outcome
    assert reply.engine == -1 and not reply.ok
    assert "buffers" in reply.evalue
    assert_serving(rc)
