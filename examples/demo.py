"""A first session with pcluster: attach to a running job, use the engines, shut it down.

Start a job first (terminal 1):   mpirun -n 5 pcluster
Then (terminal 2):                python3 examples/demo.py [connection-file]
"""

import sys
import time

import numpy as np

import pcluster

rc = pcluster.Client(sys.argv[1] if len(sys.argv) > 1 else None, timeout=30)
print("engines:", rc.ids)
dv = rc[:]

dv.push(dict(a=10))
print("dv.pull('a')          ->", dv.pull("a"))
print("rc[0].pull('a')       ->", rc[0].pull("a"))
dv["b"] = 5
print("dv['b']               ->", dv["b"])
dv.execute("import numpy as np; c = np.ones(3) * a")
print("dv.pull('c')          ->", dv.pull("c"))
print("dv.apply(x + a, 1)    ->", dv.apply(lambda x: x + a, 1))  # noqa: F821 - `a` lives on the engines
print("dv.map(x*x, range(8)) ->", dv.map(lambda x: x * x, range(8)))

x = np.arange(1000)
dv.scatter("x", x)
print("scatter/gather same   ->", np.array_equal(dv.gather("x"), x))
print("engine sums           ->", dv.apply(lambda: int(x.sum())))  # noqa: F821 - each engine's part

try:
    rc[0].execute("1 / 0")
except pcluster.RemoteError as e:
    print("remote error          ->", e)

dv.block = False
ar = dv.apply(lambda: __import__("pcluster.engine").engine.engine_id)
print("non-blocking          ->", ar, "->", ar.get(timeout=10))

t0 = time.perf_counter()
for _ in range(100):
    rc[0].apply_sync(lambda: None)
print(f"apply round trip      -> {(time.perf_counter() - t0) * 1e4:.0f} us")

rc.shutdown()
print("job shut down")
