"""The one definition of messages, errors and settings, as Python sees it, and the one error path:
a test per origin of an error (engine code, the engine itself, the controller, the task farm,
this client) showing the exception the user gets."""

import builtins
import os
import pickle
import resource
import subprocess
import time

import pytest

import pcluster
from pcluster import _core, _kernel, error

from conftest import job_env, pcluster_exe


def test_every_request_reaching_engines_has_a_handler():
    engine_side = {getattr(_core, m) for m in _core.requests} - {_core.control_request}
    assert engine_side == set(_kernel._handlers)
    # Fields come from the C++ field lists; unknown ones are refused.
    assert _core.task_request.fields == ["r", "kind", "after", "follow", "retries", "timeout", "after_failure_ok",
                                         "return_exceptions"]
    with pytest.raises(TypeError, match="no field 'colour'"):
        _core.pull_request(colour=1)


def test_every_error_kind_is_an_exception_class_from_the_table():
    assert len(_core.error_kinds) >= 12
    for kind, name, bases, doc in _core.error_kinds:
        cls = getattr(error, name)
        assert getattr(pcluster, name) is cls
        for b in bases.split(","):
            assert issubclass(cls, getattr(error, b, None) or getattr(builtins, b))
        e = cls(name, "why", "", {"engine_id": "controller", "method": "apply"})
        assert pickle.loads(pickle.dumps(e)).evalue == "why"
        assert cls.__doc__
    assert issubclass(pcluster.NoSuchEngine, IndexError)
    assert issubclass(pcluster.EngineDied, pcluster.EngineError)
    assert issubclass(pcluster.InvalidDependency, pcluster.DependencyError)


def boom():
    return 1 / 0


def test_error_from_user_code_on_an_engine(rc):
    with pytest.raises(pcluster.RemoteError) as ei:
        rc[1].apply_sync(boom)
    e = ei.value
    assert type(e) is pcluster.RemoteError
    assert (e.ename, e.engine_id) == ("ZeroDivisionError", 1)
    assert "1 / 0" in e.traceback


def sabotage_kernel_once():
    """The next request this engine gets finds its kernel returning garbage: the C++ request
    boundary must answer it (EngineInternalError) and the engine must serve on."""
    import pcluster._kernel as k

    real = k.handle

    def once(frame, part):
        k.handle = real
        return 42

    k.handle = once


def test_error_from_the_engine_itself(rc):
    rc[2].apply_sync(sabotage_kernel_once)
    with pytest.raises(pcluster.EngineInternalError) as ei:
        rc[2].pull("__name__", block=True)
    assert ei.value.engine_id == 2 and ei.value.ename == "EngineInternalError"
    assert rc[2].pull("__name__", block=True) == "__main__"


def test_error_from_the_controller_refusing_a_request(rc):
    # The client checks targets itself; a request that reaches the controller anyway is refused
    # there, before any engine sees it.
    ar = rc._new_request(_core.pull_request(names=["a"], scalar=True), [], [99], [99], "pull", True, single=True)
    with pytest.raises(pcluster.NoSuchEngine) as ei:
        ar.get(10)
    e = ei.value
    assert isinstance(e, IndexError) and isinstance(e, pcluster.RemoteError)
    assert e.engine_id == "controller"
    assert "engine id 99 out of range" in e.evalue
    assert str(e).startswith("[controller:pull] NoSuchEngine")


def nap(t):
    time.sleep(t)
    return t


def test_error_from_the_task_farm(rc):
    lv = rc.load_balanced_view()
    busy = [lv.apply(nap, 1.0) for _ in range(len(rc.ids) * 8)]
    last = busy[-1]
    assert last.abort() == 1
    with pytest.raises(pcluster.TaskAborted) as ei:
        last.get(10)
    assert ei.value.engine_id == "controller" and isinstance(ei.value, pcluster.TaskError)
    rc.abort(busy)
    rc.wait(busy, 30)


@pytest.mark.sanitizer_unfit("runs the process out of file descriptors, which the sanitizer's runtime needs for its reports")
def test_error_made_by_this_client(rc):
    """A large reply arrives in shared memory; when this process cannot map it (here: out of file
    descriptors), the request fails with ReplyLost and the connection serves on."""
    if not rc._conn.local:
        pytest.skip("the client does not share /dev/shm with the job")
    rc[0].execute("big_reply = bytes(4 << 20)", block=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    try:
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        ar = rc[0].pull("big_reply", block=False)
        with pytest.raises(pcluster.ReplyLost) as ei:
            ar.get(10)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ei.value.engine_id == "client"
    assert "cannot map the reply in shared memory" in ei.value.evalue
    assert len(rc[0].pull("big_reply", block=True)) == 4 << 20


def test_bad_setting_refused_by_the_client(job, monkeypatch):
    monkeypatch.setenv("PCLUSTER_SEND_LINGER_US", "soon")
    with pytest.raises(ValueError, match=r"PCLUSTER_SEND_LINGER_US=soon is not valid: it takes a whole number from 0"):
        pcluster.Client(str(job.path))


def test_bad_setting_refused_by_the_job_at_start(tmp_path):
    env = job_env({"PCLUSTER_STREAM_EVERY": "abc"})
    p = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", pcluster_exe(), "--connection-file",
                        str(tmp_path / "c.json")], env=env, capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "PCLUSTER_STREAM_EVERY=abc is not valid: it takes a number from 0.001 to 3600" in out
    assert not (tmp_path / "c.json").exists()


def test_bad_connection_file_names_the_field(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"version": %d, "ip": "127.0.0.1"}' % _core.protocol_version)
    with pytest.raises(pcluster.NoJobError, match="field 'transport' is missing|is missing"):
        pcluster.Client(str(f), timeout=1)
    f.write_text('{"version": 1, "ip": "127.0.0.1", "port": 5}')
    with pytest.raises(pcluster.NoJobError, match="protocol version 1.*same pcluster build"):
        pcluster.Client(str(f), timeout=1)


def test_help_lists_every_setting():
    out = subprocess.run([pcluster_exe(), "--help"], capture_output=True, text=True, timeout=30).stdout
    for name, default, who, doc in _core.settings:
        assert name in out
