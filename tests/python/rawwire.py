"""The wire protocol by hand (docs/protocol.md): frames, a login with the job's key, request
frames recorded from a real client and replayed with other ids. What an attacker or a broken
client can send; used by tests/python/test_hardening.py and bench/soak_backpressure.py.

Speaks the current protocol (VERSION 4; versions 2 and 3 frames are laid out alike) and, for before/after figures, that of a499dd7 and
earlier (OLD_VERSION 1: cereal wrote a u32 class version ahead of each struct's fields, so a
request's id sits 8 bytes further in). Raw takes the version its bridge's challenge carries.

pcluster is imported only where a real client is needed (record_requests, auth_request_meta at
VERSION 4), so the caller chooses which build's package is on sys.path.
"""

import contextlib
import hashlib
import hmac
import os
import select
import socket
import struct
import threading
import time

MAGIC = 0x314C4350
VERSION = 4
OLD_VERSION = 1
# Versions whose frames put the request id where VERSION's do (2 to 3 added control_reply.records,
# 3 to 4 engine_reply.rich_output).
SAME_LAYOUT = (4, 3, 2)
PREFIX = struct.Struct("<IHHIIQ")
T_CHALLENGE, T_AUTH_REQUEST, T_AUTH_REPLY = 1, 2, 3
T_EXECUTE, T_SHM_FRAME, T_SHM_RETURN, T_ENGINE_REPLY = 10, 20, 21, 40
REQUEST_TYPES = range(10, 20)  # execute_request .. control_request: every request starts with its route


def frame(type_, meta, bufs=(), version=VERSION):
    body = len(meta) + 8 * len(bufs) + sum(len(b) for b in bufs)
    return (PREFIX.pack(MAGIC, version, type_, len(meta), len(bufs), body)
            + b"".join(struct.pack("<Q", len(b)) for b in bufs) + meta + b"".join(bufs))


def string(b):
    return struct.pack("<Q", len(b)) + b


def recv_exact(s, n, deadline):
    out = bytearray()
    while len(out) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError("the bridge closed the connection")
        out += chunk
    return bytes(out)


def read_frame(s, timeout=10, version=VERSION):
    """(type, meta, whole frame) of the next frame on s; version None: either version."""
    deadline = time.monotonic() + timeout
    pre = recv_exact(s, PREFIX.size, deadline)
    magic, got, type_, meta_len, nbufs, body_len = PREFIX.unpack(pre)
    assert magic == MAGIC and (got == version or (version is None and got in (*SAME_LAYOUT, OLD_VERSION))), (magic, got)
    body = recv_exact(s, body_len, deadline)
    return type_, body[8 * nbufs:8 * nbufs + meta_len], pre + body


def _id_at(data):
    """Where a frame's request id starts: after the buffer lengths and cereal's format byte;
    at OLD_VERSION also after the message's class version and, in a request, its route's."""
    _, version, type_, _, nbufs, _ = PREFIX.unpack_from(data)
    at = PREFIX.size + 8 * nbufs + 1
    if version == OLD_VERSION:
        at += 8 if type_ in REQUEST_TYPES else 4
    return at


def frame_id(data):
    """The request id of a frame (the first field of every request and reply)."""
    return struct.unpack_from("<Q", data, _id_at(data))[0]


def with_id(data, new_id):
    """A copy of a recorded request frame carrying another request id."""
    at = _id_at(data)
    return data[:at] + struct.pack("<Q", new_id) + data[at + 8:]


def with_string(data, old, new):
    """A copy of a frame (without buffers) whose string field `old` is `new` (cereal: u64 length, bytes)."""
    old_b, new_b = old.encode(), new.encode()
    enc = struct.pack("<Q", len(old_b)) + old_b
    at = data.index(enc)
    magic, version, type_, meta_len, nbufs, body_len = PREFIX.unpack_from(data)
    assert nbufs == 0
    grow = len(new_b) - len(old_b)
    out = data[:at] + struct.pack("<Q", len(new_b)) + new_b + data[at + len(enc):]
    return PREFIX.pack(magic, version, type_, meta_len + grow, nbufs, body_len + grow) + out[PREFIX.size:]


def auth_request_meta(mac, probe=b"", token=bytes(32), version=VERSION, **extra):
    """An auth_request's meta. At VERSION from the client's field list (so a field added later is
    caught here); at OLD_VERSION the four fields of then, after the class version 1."""
    parts = {"mac": mac, "client_nonce": os.urandom(32), "shm_probe": string(probe), "shm_token": token}
    if version == OLD_VERSION:
        assert not extra, "OLD_VERSION has no other fields"
        return b"\x01" + struct.pack("<I", 1) + b"".join(parts[n] for n in ("mac", "client_nonce", "shm_probe", "shm_token"))
    from pcluster import _core

    for name, value in extra.items():
        parts[name] = value
    fields = list(_core.auth_request.fields)
    for name in fields:
        if name not in parts:
            parts[name] = struct.pack("<I", 0)  # u32 fields added later (resume: 0, a new client)
    return b"\x01" + b"".join(parts[n] for n in fields)


def error_text(meta):
    """The evalue of an engine_reply meta (id u64, engine i32, origin u8, status u8, kind u8, ename, evalue)."""
    at = 1 + 8 + 4 + 3
    n = struct.unpack_from("<Q", meta, at)[0]
    at += 8 + n
    n = struct.unpack_from("<Q", meta, at)[0]
    return meta[at + 8:at + 8 + n].decode("utf-8", "replace")


class Raw:
    """A TCP connection to a job's bridge speaking the protocol by hand: what an attacker (or a
    broken client) can send. login=False stops after the challenge. .version is the bridge's."""

    def __init__(self, info, login=True, key=None, probe=None, token=bytes(32)):
        self.info = info
        self.s = socket.create_connection((info["ip"], info["port"]), timeout=10)
        try:
            self._start(login, key, probe, token)
        except BaseException:
            self.s.close()
            raise

    def _start(self, login, key, probe, token):
        info = self.info
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        type_, meta, data = read_frame(self.s, version=None)
        assert type_ == T_CHALLENGE
        self.version = PREFIX.unpack_from(data)[1]
        at = 1 + 4 * (self.version == OLD_VERSION)  # past the class version at OLD_VERSION
        self.nonce = meta[at:at + 32]
        self.no = None
        self.seq = 0
        if login:
            k = bytes.fromhex(key or info["key"])
            mac = hmac.new(k, b"pcluster-client" + self.nonce, hashlib.sha256).digest()
            self.s.sendall(frame(T_AUTH_REQUEST, auth_request_meta(mac, probe or b"", token, self.version),
                                 version=self.version))
            type_, meta, _ = read_frame(self.s, version=self.version)
            assert type_ == T_AUTH_REPLY
            ok = meta[at]
            n = struct.unpack_from("<Q", meta, at + 1)[0]
            if not ok:
                raise PermissionError(meta[at + 9:at + 9 + n].decode())
            self.no = struct.unpack_from("<I", meta, at + 9 + n)[0]
            self.shm_ok = bool(meta[-1])

    def next_id(self):
        self.seq += 1
        return (self.no << 32) | self.seq

    def send(self, data):
        self.s.sendall(data)

    def reply(self, timeout=10):
        return read_frame(self.s, timeout, self.version)

    def closed_by_bridge(self, timeout=5):
        """Whether the bridge closes this connection within timeout (reading what comes meanwhile)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.s.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.s.recv(1 << 16):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False
        return False

    def close(self):
        with contextlib.suppress(OSError):
            self.s.close()


def record_requests(info, action):
    """Runs action(client) with a real Client (of the pcluster on sys.path) whose connection passes
    a recording proxy; returns the frames (bytes) it sent after its login. Requests built by the
    real client, replayed by hand, stay right however the messages' fields change."""
    import pcluster

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    sent = bytearray()
    stop = threading.Event()

    def pump():
        a, _ = lsock.accept()
        b = socket.create_connection((info["ip"], info["port"]))
        while not stop.is_set():
            r, _, _ = select.select([a, b], [], [], 0.05)
            for s in r:
                data = s.recv(1 << 20)
                if not data:
                    stop.set()
                    break
                (b if s is a else a).sendall(data)
                if s is a:
                    sent.extend(data)
        a.close()
        b.close()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    proxied = dict(info, ip="127.0.0.1", addresses=["127.0.0.1"], port=lsock.getsockname()[1])
    c = pcluster.Client(proxied, timeout=10)
    try:
        action(c)
    finally:
        c.close()
        stop.set()
        t.join(10)
        lsock.close()
    frames, at = [], 0
    while at + PREFIX.size <= len(sent):
        body = PREFIX.unpack_from(sent, at)[5]
        frames.append(bytes(sent[at:at + PREFIX.size + body]))
        at += PREFIX.size + body
    return [f for f in frames if PREFIX.unpack_from(f)[2] != T_AUTH_REQUEST]
