"""What engines print: captured per request and per engine, streamed while a long request runs,
never mixed between requests, delivered with failures, large outputs intact, execute_result."""

import sys
import time

import cloudpickle
import pytest

import pcluster

# Functions defined here must travel by value: the engines cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

IDS = [0, 1, 2, 3]
LONG = 30  # bound on any wait for work that should finish in a few seconds


def whoami():
    from pcluster.engine import engine_id

    return engine_id


def print_id():
    from pcluster import engine

    print(f"engine {engine.engine_id} says hi")
    return engine.engine_id


def settle(rc):
    """Wait until every engine has finished whatever earlier tests left running on it."""
    assert rc[:].apply_async(whoami).get(LONG) == IDS


# --------------------------------------------------------------------------- capture
def test_stdout_captured_per_engine_apply(rc):
    ar = rc[:].apply_async(print_id)
    assert ar.get(LONG) == IDS
    assert ar.stdout == [f"engine {i} says hi\n" for i in IDS]
    assert ar.stderr == [""] * 4
    assert ar["stdout"] == ar.stdout
    assert [m["stdout"] for m in ar.metadata] == ar.stdout


def test_stdout_captured_per_engine_execute(rc):
    ar = rc[:].execute("from pcluster import engine\nprint('id', engine.engine_id)\nprint('second line')", block=True)
    assert ar.stdout == [f"id {i}\nsecond line\n" for i in IDS]
    ar = rc[:].execute("print('nb', engine.engine_id)", block=False)
    assert ar.get(LONG) == [None] * 4
    assert ar.stdout == [f"nb {i}\n" for i in IDS]


def test_single_engine_output_is_a_str(rc):
    ar = rc[2].apply_async(print_id)
    assert ar.get(LONG) == 2
    assert ar.stdout == "engine 2 says hi\n"
    assert ar.stderr == ""
    assert ar["stdout"] == "engine 2 says hi\n"
    assert ar.metadata["stdout"] == "engine 2 says hi\n"


def test_subset_view_output_in_target_order(rc):
    ar = rc[[3, 0]].apply_async(print_id)
    assert ar.get(LONG) == [3, 0]
    assert ar.stdout == ["engine 3 says hi\n", "engine 0 says hi\n"]


def test_stderr_captured_separately(rc):
    def both():
        import sys

        from pcluster.engine import engine_id

        print(f"out {engine_id}")
        print(f"err {engine_id}", file=sys.stderr)
        sys.stderr.write("raw\n")

    ar = rc[:].apply_async(both)
    ar.get(LONG)
    assert ar.stdout == [f"out {i}\n" for i in IDS]
    assert ar.stderr == [f"err {i}\nraw\n" for i in IDS]
    assert [m["stderr"] for m in ar.metadata] == ar.stderr


def test_outputs_belong_to_their_request(rc):
    # Sequential requests on the same engines: each keeps only its own output.
    a = rc[:].apply_async(lambda: print("first"))
    b = rc[:].apply_async(lambda: print("second"))
    c = rc[:].apply_async(lambda: None)
    for ar in (a, b, c):
        ar.get(LONG)
    assert a.stdout == ["first\n"] * 4
    assert b.stdout == ["second\n"] * 4
    assert c.stdout == [""] * 4


def test_capture_output_false(rc):
    rc.capture_output = False
    ar = rc[:].apply_async(print_id)
    assert ar.get(LONG) == IDS
    assert ar.stdout == [""] * 4
    assert ar.stderr == [""] * 4
    ar = rc[:].execute("import sys\nprint('not captured')\nprint('nor this', file=sys.stderr)", block=True)
    assert ar.stdout == [""] * 4
    assert ar.stderr == [""] * 4
    # Turning it back on captures again.
    rc.capture_output = True
    ar = rc[:].apply_async(print_id)
    ar.get(LONG)
    assert ar.stdout == [f"engine {i} says hi\n" for i in IDS]


def test_capture_is_per_client(job, rc):
    with pcluster.Client(str(job.path), timeout=10) as other:
        other.capture_output = False
        quiet = other[:].apply_async(print_id)
        loud = rc[:].apply_async(print_id)
        assert quiet.get(LONG) == IDS and loud.get(LONG) == IDS
        assert quiet.stdout == [""] * 4
        assert loud.stdout == [f"engine {i} says hi\n" for i in IDS]


# --------------------------------------------------------------------------- streaming
def test_output_streams_while_request_runs(rc):
    settle(rc)

    def chatty():
        import time

        from pcluster.engine import engine_id

        print(f"early {engine_id}", flush=True)
        time.sleep(2.0)
        print(f"late {engine_id}")
        return engine_id

    ar = rc[:].apply_async(chatty)
    seen_early = None
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        out = ar.stdout  # read before ready(): what it shows must predate completion
        if ar.ready():
            break
        if all(f"early {i}" in o for i, o in zip(IDS, out)):
            seen_early = out
            break
        time.sleep(0.05)
    assert seen_early is not None, "no engine's early output was streamed before the request finished"
    assert not any("late" in o for o in seen_early), seen_early
    assert not ar.done()
    assert ar.get(LONG) == IDS
    assert ar.stdout == [f"early {i}\nlate {i}\n" for i in IDS]


def test_streamed_output_single_engine_and_stderr(rc):
    settle(rc)

    def ticker():
        import sys
        import time

        for k in range(15):
            print(f"tick {k}")
            print(f"etick {k}", file=sys.stderr)
            time.sleep(0.1)

    ar = rc[1].apply_async(ticker)
    partial = None
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        out, err = ar.stdout, ar.stderr
        if ar.ready():
            break
        if "tick 0\n" in out and "etick 0\n" in err:
            partial = (out, err)
            break
        time.sleep(0.05)
    assert partial is not None, "a 1.5 s request's output was not streamed while it ran"
    out, err = partial
    assert isinstance(out, str)
    expected_out = "".join(f"tick {k}\n" for k in range(15))
    expected_err = "".join(f"etick {k}\n" for k in range(15))
    assert expected_out.startswith(out)  # streamed text is a prefix, in order, no duplicates
    assert expected_err.startswith(err)
    ar.get(LONG)
    assert ar.stdout == expected_out
    assert ar.stderr == expected_err


def test_concurrent_requests_outputs_never_mix(rc):
    settle(rc)

    def spam(marker, n):
        import time

        for k in range(n):
            print(f"{marker}-{k:04d}")
            if k % 20 == 0:
                time.sleep(0.03)  # runs longer than the streaming threshold
        return marker

    n = 400
    a = rc[0].apply_async(spam, "AAAA", n)
    b = rc[1].apply_async(spam, "BBBB", n)
    c = rc[[2, 3]].apply_async(spam, "CCCC", n)
    assert a.get(LONG) == "AAAA"
    assert b.get(LONG) == "BBBB"
    assert c.get(LONG) == ["CCCC", "CCCC"]
    assert a.stdout == "".join(f"AAAA-{k:04d}\n" for k in range(n))
    assert b.stdout == "".join(f"BBBB-{k:04d}\n" for k in range(n))
    assert c.stdout == ["".join(f"CCCC-{k:04d}\n" for k in range(n))] * 2


def test_queued_requests_on_one_engine_keep_their_output(rc):
    settle(rc)

    def slow_print(marker):
        import time

        print(f"{marker} start")
        time.sleep(0.8)  # long enough to stream
        print(f"{marker} end")

    ars = [rc[0].apply_async(slow_print, m) for m in ("one", "two", "three")]
    for ar in ars:
        ar.get(LONG)
    for ar, m in zip(ars, ("one", "two", "three")):
        assert ar.stdout == f"{m} start\n{m} end\n"


# --------------------------------------------------------------------------- failures
def test_output_of_failing_request_is_delivered(rc):
    def fails():
        import sys

        from pcluster.engine import engine_id

        print(f"before failure {engine_id}")
        print("to stderr", file=sys.stderr)
        raise RuntimeError(f"failed on {engine_id}")

    ar = rc[2].apply_async(fails)
    with pytest.raises(pcluster.RemoteError) as ei:
        ar.get(LONG)
    assert ei.value.engine_id == 2
    assert ar.stdout == "before failure 2\n"
    assert ar.stderr == "to stderr\n"
    assert ar.metadata["status"] == "error"
    assert ar.metadata["stdout"] == "before failure 2\n"

    ar = rc[:].apply_async(fails)
    with pytest.raises(pcluster.CompositeError):
        ar.get(LONG)
    assert ar.stdout == [f"before failure {i}\n" for i in IDS]
    assert ar.stderr == ["to stderr\n"] * 4


def test_output_of_partly_failing_request(rc):
    def some_fail():
        from pcluster.engine import engine_id

        print(f"p{engine_id}")
        if engine_id % 2:
            raise ValueError("odd")

    ar = rc[:].apply_async(some_fail)
    with pytest.raises(pcluster.CompositeError):
        ar.get(LONG)
    assert ar.stdout == [f"p{i}\n" for i in IDS]


def test_output_of_failing_streamed_request(rc):
    settle(rc)

    def slow_fail():
        import time

        print("streamed before the error", flush=True)
        time.sleep(0.8)
        print("just before the error")
        raise KeyError("late failure")

    ar = rc[3].apply_async(slow_fail)
    with pytest.raises(pcluster.RemoteError) as ei:
        ar.get(LONG)
    assert ei.value.ename == "KeyError"
    assert ar.stdout == "streamed before the error\njust before the error\n"


def test_output_of_failing_execute(rc):
    with pytest.raises(pcluster.RemoteError):
        rc[1].execute("print('printed first')\nraise ValueError('then failed')", block=True)
    ar = rc[1].execute("print('printed first')\nraise ValueError('then failed')", block=False)
    assert ar.wait(LONG)
    assert not ar.successful()
    assert ar.stdout == "printed first\n"


# --------------------------------------------------------------------------- size
def _big_text(n_lines, tag):
    return "".join(f"{tag} line {k:07d} " + "x" * 40 + "\n" for k in range(n_lines))


def test_large_print_arrives_intact(rc):
    settle(rc)
    n_lines = 60_000  # ~4 MB

    def big(n, tag):
        import sys

        sys.stdout.write(_big_text(n, tag))

    expected = _big_text(n_lines, "big")
    assert len(expected) > 3_000_000
    ar = rc[0].apply_async(big, n_lines, "big")
    ar.get(LONG)
    out = ar.stdout
    assert len(out) == len(expected)
    assert out == expected


def test_large_streamed_print_on_all_engines(rc):
    settle(rc)

    def big_slow(n):
        import time

        from pcluster.engine import engine_id

        for k in range(n):
            print(f"e{engine_id} line {k:07d} " + "y" * 60)
            if k % 2000 == 0:
                time.sleep(0.05)  # long enough to stream in pieces
        return engine_id

    n = 20_000  # ~1.5 MB per engine
    ar = rc[:].apply_async(big_slow, n)
    assert ar.get(LONG * 2) == IDS
    for i, out in zip(IDS, ar.stdout):
        expected = "".join(f"e{i} line {k:07d} " + "y" * 60 + "\n" for k in range(n))
        assert len(out) == len(expected), f"engine {i}: {len(out)} chars, expected {len(expected)}"
        assert out == expected, f"engine {i}'s output is corrupted"


def test_unicode_output(rc):
    ar = rc[0].apply_async(lambda: print("héllo wörld ✓ 日本語 🚀"))
    ar.get(LONG)
    assert ar.stdout == "héllo wörld ✓ 日本語 🚀\n"


# --------------------------------------------------------------------------- execute_result
def test_execute_result_repr(rc):
    dv = rc[:]
    ar = dv.execute("from pcluster.engine import engine_id\nengine_id * 10 + 1", silent=False, block=True)
    assert ar.execute_result == [repr(i * 10 + 1) for i in IDS]
    assert [m["execute_result"] for m in ar.metadata] == ar.execute_result
    ar = dv.execute("'text-%d' % engine_id", silent=False, block=True)
    assert ar.execute_result == [repr(f"text-{i}") for i in IDS]
    ar = dv.execute("{'k': [1, 2]}", silent=False, block=False)
    assert ar.get(LONG) == [None] * 4  # the value travels as execute_result, not the result
    assert ar.execute_result == [repr({"k": [1, 2]})] * 4


def test_execute_result_absent(rc):
    dv = rc[:]
    assert dv.execute("1 + 1", silent=True, block=True).execute_result == [None] * 4  # silent: no Out
    assert dv.execute("out_x = 3", silent=False, block=True).execute_result == [None] * 4  # a statement
    assert dv.execute("None", silent=False, block=True).execute_result == [None] * 4
    assert dv.execute("print('shown')", silent=False, block=True).execute_result == [None] * 4


def test_execute_result_single_engine_and_output(rc):
    ar = rc[3].execute("print('side effect')\n[engine_id] * 2", silent=False, block=True)
    assert ar.execute_result == "[3, 3]"
    assert ar.stdout == "side effect\n"
    assert ar.metadata["execute_result"] == "[3, 3]"


# --------------------------------------------------------------------------- display_outputs
def test_display_outputs(rc, capsys):
    ar = rc[:].execute(
        "import sys\nfrom pcluster.engine import engine_id\nprint(engine_id)\n"
        "if engine_id == 1:\n    print('oops', file=sys.stderr)\n"
        "if engine_id == 2:\n    print('two\\nlines')", block=True
    )
    capsys.readouterr()
    ar.display_outputs()
    cap = capsys.readouterr()
    assert "[stdout:0] 0\n" in cap.out
    assert "[stdout:1] 1\n" in cap.out
    assert "[stdout:2]\n2\ntwo\nlines\n" in cap.out
    assert "[stdout:3] 3\n" in cap.out
    assert cap.out.index("[stdout:0]") < cap.out.index("[stdout:1]") < cap.out.index("[stdout:2]") < cap.out.index("[stdout:3]")
    assert "[stderr:1] oops\n" in cap.err
    assert "[stderr:" not in cap.err.replace("[stderr:1]", "")


def big_multibyte_prints():
    # Streamed in chunks of at most 1 MiB: 1.8 MB of 3-byte characters per print makes a chunk
    # end inside a character unless the engine cuts at character boundaries.
    print("█" * 600_000, flush=True)
    time.sleep(0.8)  # past the streaming delay: the first print goes out as `output` messages
    print("é" * 700_001, flush=True)
    time.sleep(0.3)
    return "ok"


def test_streamed_multibyte_output_arrives_intact(rc):
    ar = rc[1].apply_async(big_multibyte_prints)
    assert ar.get(LONG) == "ok"
    assert ar.stdout == "█" * 600_000 + "\n" + "é" * 700_001 + "\n"
    assert "\ufffd" not in ar.stdout
