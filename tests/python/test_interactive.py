"""Values defined interactively travel by value, and what a sent function sees (issue 12).

The same user code (USER_CODE) runs as a script, in a real IPython process and in a Jupyter
notebook (nbclient): in all three its functions, classes, instances, closures and lambdas live
in module __main__, which plain pickle would send by reference (the engines have no such names).
The other tests check the name resolution rule of a sent function (docs/architecture.md,
"Serialization"): what the client sent is what the function sees for that call; names it did not
send come from the engine's namespace; a call does not write into that namespace; @interactive
functions run in it.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

import pcluster
from pcluster import serialize

from conftest import job_env

cloudpickle.register_pickle_by_value(sys.modules[__name__])

T = 30

# Cells of a notebook, separated by "# %%"; run whole as a script or in IPython. Prints one line
# "RESULT {json}".
USER_CODE = textwrap.dedent(
    '''
    import json
    import os

    import numpy as np

    import pcluster
    from pcluster import serialize

    rc = pcluster.Client(os.environ["PCLUSTER_CONNECTION_FILE"], timeout=10)
    dv = rc[:]
    lv = rc.load_balanced_view()
    out = {}
    # %%
    def double(x):
        return 2 * x


    class Point:
        def __init__(self, x):
            self.x = x

        def norm(self):
            return abs(self.x)


    def make_adder(k):
        def add(x):
            return x + k

        return add


    add10 = make_adder(10)
    triple = lambda x: 3 * x
    origin = Point(0)
    # %%
    rc[0].push({"double": double, "Point": Point, "origin": origin, "add10": add10, "triple": triple}, block=True)
    out["push"] = rc[0].apply_sync(lambda: [double(1), Point(-2).norm(), origin.x, add10(1), triple(1)])
    out["apply_args"] = rc[0].apply_sync(lambda f, g, h, p: [f(2), g(2), h(2), p.norm()], double, add10, triple, Point(-5))
    out["apply_kwargs"] = rc[0].apply_sync(lambda **kw: kw["f"](3) + kw["p"].x, f=double, p=Point(4))
    # %%
    rc[0:2].scatter("pts", [Point(1), Point(2)], block=True)
    out["scatter"] = rc[0:2].apply_sync(lambda: [q.x for q in pts])
    out["dv_map"] = dv.map_sync(lambda q: q.norm(), [Point(-1), Point(-2), Point(3), Point(4)])
    out["lv_map"] = lv.map_sync(lambda q: double(q.x), [Point(i) for i in range(6)])
    out["lv_apply"] = lv.apply_sync(lambda p: type(p).__name__ + str(p.x), Point(7))
    # %%
    out["keywords"] = rc[0].apply_async(lambda **kw: sorted(kw.items()), f=1, args=2, block=3, targets=4).get(30)
    out["lv_keywords"] = lv.apply_sync(lambda **kw: sorted(kw.items()), f=1, args=2, block=3, targets=4)
    # %%
    A = 1
    out["A1"] = dv.apply_sync(lambda: A)
    A = 2
    out["A2"] = dv.apply_sync(lambda: A)
    # %%
    out["oob"] = len(serialize.dumps({"a": np.arange(1 << 20), "f": double, "p": origin}))
    rc.close()
    print("RESULT", json.dumps(out))
    '''
)

EXPECTED = {
    "push": [2, 2, 0, 11, 3],
    "apply_args": [4, 12, 6, 5],
    "apply_kwargs": 10,
    "scatter": [[1], [2]],
    "dv_map": [1, 2, 3, 4],
    "lv_map": [0, 2, 4, 6, 8, 10],
    "lv_apply": "Point7",
    "keywords": [["args", 2], ["block", 3], ["f", 1], ["targets", 4]],
    "lv_keywords": [["args", 2], ["block", 3], ["f", 1], ["targets", 4]],
    "A1": [1, 1, 1, 1],
    "A2": [2, 2, 2, 2],  # not the stale 1 of the first send
    "oob": 2,  # the stream and the array's buffer, out of band
}


def _result(text, context):
    # (IPython may put a terminal title escape before it)
    lines = [ln[ln.index("RESULT ") + len("RESULT "):] for ln in text.splitlines() if "RESULT " in ln]
    assert lines, f"no RESULT line\n{context}"
    return json.loads(lines[-1])


def _user_env(job):
    return job_env({"PCLUSTER_CONNECTION_FILE": str(job.path)})


def test_script_main_values_travel(job, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(USER_CODE)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=_user_env(job))
    assert p.returncode == 0, p.stdout + p.stderr
    assert _result(p.stdout, p.stderr) == EXPECTED


def test_ipython_main_values_travel(job):
    pytest.importorskip("IPython")
    # A real IPython process: its user namespace is module __main__ (what plain pickle would
    # have referred to by name).
    code = "import pickle, sys\nassert sys.modules['__main__'].__dict__ is get_ipython().user_ns\n" + USER_CODE
    p = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", "-c", code],
                       capture_output=True, text=True, timeout=120, env=_user_env(job))
    assert p.returncode == 0, p.stdout + p.stderr
    assert _result(p.stdout, p.stdout + p.stderr) == EXPECTED


def test_notebook_main_values_travel(job):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.strip()) for c in USER_CODE.split("# %%")]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _user_env(job).items():
            mp.setenv(k, v)
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=60, startup_timeout=60).execute()
    outs = [o for c in nb.cells for o in c.outputs]
    text = "".join(o.get("text", "") for o in outs if o.output_type == "stream")
    assert _result(text, outs) == EXPECTED


# --------------------------------------------------------------------------- the rule, in detail
def test_any_keyword_name_reaches_the_function(rc):
    def kw(**k):
        return sorted(k)

    names = dict(f=1, args=2, block=3, targets=4, kwargs=5)
    dv, one, lv = rc[:], rc[0], rc.load_balanced_view()
    assert one.apply_sync(kw, **names) == sorted(names)
    assert one.apply_async(kw, **names).get(T) == sorted(names)
    assert dv.apply_sync(kw, **names) == [sorted(names)] * len(rc.ids)
    assert lv.apply_sync(kw, **names) == sorted(names)
    assert lv.apply_async(kw, **names).get(T) == sorted(names)
    with lv.temp_flags(block=True):
        assert lv.apply(kw, f=1, args=2, targets=3) == ["args", "f", "targets"]


H12_GLOBAL = 1


def read_global():
    return H12_GLOBAL


def test_a_new_value_of_a_sent_global_is_seen(rc):
    global H12_GLOBAL
    dv = rc[:]
    H12_GLOBAL = 1
    assert dv.apply_sync(read_global) == [1] * 4
    H12_GLOBAL = 2
    assert dv.apply_sync(read_global) == [2] * 4
    H12_GLOBAL = [1]  # a value that changes in place: never a cached pickle
    assert dv.apply_sync(read_global) == [[1]] * 4
    H12_GLOBAL.append(2)
    assert dv.apply_sync(read_global) == [[1, 2]] * 4
    H12_GLOBAL = 3
    assert rc.load_balanced_view().map_sync(lambda _: read_global(), range(8)) == [3] * 8


def uses_pushed():
    return h12_pushed_name + 1  # noqa: F821 - not defined here: comes from the engine's namespace


def test_a_name_not_sent_comes_from_the_engine_namespace(rc):
    dv = rc[:]
    dv.push({"h12_pushed_name": 41}, block=True)
    assert dv.apply_sync(uses_pushed) == [42] * 4
    dv.push({"h12_pushed_name": 1}, block=True)  # looked up at each call: never stale either
    assert dv.apply_sync(uses_pushed) == [2] * 4
    assert rc.load_balanced_view().apply_sync(uses_pushed) == 2
    assert dv.apply_sync(lambda: len(sorted([2, 1]))) == [2] * 4  # builtins still resolve


H12_SENT = "client"


def writes_globals():
    global H12_WRITTEN, H12_COUNTER
    H12_WRITTEN = H12_SENT
    H12_COUNTER = H12_COUNTER + 1
    return H12_COUNTER


H12_COUNTER = 0


def test_a_call_does_not_write_into_the_namespace(rc):
    dv = rc[:]
    dv.execute("for _n in ('H12_SENT', 'H12_WRITTEN', 'H12_COUNTER'): globals().pop(_n, None)", block=True)
    # Sent twice with the same bytes (an engine may reuse the unpickled code): each call starts
    # from what was sent.
    assert dv.apply_sync(writes_globals) == [1] * 4
    assert dv.apply_sync(writes_globals) == [1] * 4
    dv.execute("h12_seen = [n for n in ('H12_SENT', 'H12_WRITTEN', 'H12_COUNTER') if n in globals()]", block=True)
    assert dv.pull("h12_seen", block=True) == [[]] * 4


def appends_to_sent_list():
    H12_LIST.append(99)
    return len(H12_LIST)


H12_LIST = [1]


def test_a_call_cannot_change_what_the_next_call_is_sent(rc):
    one = rc[0]
    assert [one.apply_sync(appends_to_sent_list) for _ in range(3)] == [2, 2, 2]
    assert H12_LIST == [1]


@pcluster.interactive
def interactive_writer(v):
    global h12_interactive
    h12_interactive = v
    return h12_pushed_for_interactive * v  # noqa: F821 - the engine's


H12_CLIENT_ONLY = 5


@pcluster.interactive
def interactive_reader():
    return H12_CLIENT_ONLY


def test_interactive_runs_in_the_engine_namespace(rc):
    dv = rc[:]
    dv.push({"h12_pushed_for_interactive": 3}, block=True)
    assert dv.apply_sync(interactive_writer, 7) == [21] * 4
    assert dv.pull("h12_interactive", block=True) == [7] * 4
    assert rc.load_balanced_view().apply_sync(interactive_writer, 8) == 24
    # its globals are not sent: a name only the client has is not defined there
    dv.execute("globals().pop('H12_CLIENT_ONLY', None)", block=True)
    with pytest.raises(pcluster.RemoteError) as e:
        rc[0].apply_sync(interactive_reader)
    assert "NameError" in str(e.value) and "H12_CLIENT_ONLY" in str(e.value)
    with pytest.raises(TypeError):
        pcluster.interactive(len)


H12_SHARED = None


def read_shared():
    return H12_SHARED


def test_clients_sharing_names_see_their_own_values(job):
    global H12_SHARED
    clients = [pcluster.Client(str(job.path), timeout=10) for _ in range(2)]
    try:
        ars = []
        for i in range(40):
            c = clients[i % 2]
            H12_SHARED = (i % 2, i)  # this client's value for this send
            view = c[:] if i % 4 < 2 else c.load_balanced_view()
            ars.append((H12_SHARED, view.apply_async(read_shared)))
        for want, ar in ars:
            got = ar.get(T)
            got = got if isinstance(got, list) else [got]
            assert all(tuple(g) == want for g in got), (want, got)
    finally:
        for c in clients:
            c.close()


def test_numpy_arrays_stay_out_of_band():
    a = np.arange(1 << 20, dtype=np.float64)
    bufs = serialize.dumps({"a": a, "f": read_global, "b": a[::2].copy()})
    assert len(bufs) == 3  # stream + both arrays' buffers
    assert len(bufs[0]) < 64 * 1024  # neither array copied into the stream
    back = serialize.loads(bufs)
    assert np.array_equal(back["a"], a) and back["f"]() == H12_GLOBAL


def test_importable_objects_go_by_reference():
    stream = serialize.dumps({"join": os.path.join, "Path": Path, "m": np})[0]
    assert b"posixpath" in stream and b"pathlib" in stream
    assert len(stream) < 200  # names, not code


def test_a_function_holding_an_array_travels_whole(rc):
    """Function bytes travel as one value: an array a sent function holds (a default, a global it
    names) goes inside its pickle, not as an out-of-band buffer that would be lost."""
    weights = np.arange(300_000)

    def f(x, w=np.arange(200_000)):
        return int(x + w[-1] + weights[-1])

    assert rc[0].apply_sync(f, 1) == 1 + 199_999 + 299_999
    assert rc.load_balanced_view().apply_sync(f, 2) == 2 + 199_999 + 299_999


USE_PICKLE_CODE = """
import json, pcluster
rc = pcluster.Client()
dv = rc[:]
A = 1
def reads_a():
    return A
dv.push({"A": 5}, block=True)
sent = dv.apply_sync(reads_a)
dv.use_pickle()
engine_side = dv.apply_sync(reads_a)
lv_side = rc.load_balanced_view().apply_sync(reads_a)
dv.use_dill()
again = dv.apply_sync(reads_a)
print("RESULT " + json.dumps([sent, engine_side, lv_side, again]))
"""


def test_use_pickle_and_use_cloudpickle_by_name(job, tmp_path):
    """ipyparallel's view.use_pickle(): a __main__ function reads the engine's globals (as
    @interactive); use_cloudpickle()/use_dill() (the default): the values it was sent with."""
    script = tmp_path / "use_pickle.py"
    script.write_text(USE_PICKLE_CODE)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=_user_env(job))
    assert p.returncode == 0, p.stdout + p.stderr
    n = len(_result(p.stdout, p.stderr)[0])
    assert _result(p.stdout, p.stderr) == [[1] * n, [5] * n, 5, [1] * n]
