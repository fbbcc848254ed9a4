"""A first session with pcluster: attach to a running job, use the engines, shut it down.

Start a job first (terminal 1):   mpirun -n 5 pcluster
Then (terminal 2):                python3 examples/demo.py [connection-file]
"""

import asyncio
import sys
import time

import numpy as np

import pcluster

rc = pcluster.Client(sys.argv[1] if len(sys.argv) > 1 else None, timeout=30)
print("engines:", rc.ids)
dv = rc[:]  # as in ipyparallel, calls do not block: they return AsyncResults

dv.push(dict(a=10)).get()
print("dv.pull('a').get()    ->", dv.pull("a").get())
print("rc[0].pull('a', block=True) ->", rc[0].pull("a", block=True))
dv["b"] = 5  # view[...] always blocks
print("dv['b']               ->", dv["b"])
dv.execute("import numpy as np; c = np.ones(3) * a").get()
print("dv.pull('c').get()    ->", dv.pull("c").get())
print("dv.apply_sync(x + a, 1) ->", dv.apply_sync(lambda x: x + a, 1))  # noqa: F821 - `a` lives on the engines
print("dv.map_sync(x*x, range(8)) ->", dv.map_sync(lambda x: x * x, range(8)))

x = np.arange(1000)
dv.scatter("x", x, block=True)
print("scatter/gather same   ->", np.array_equal(dv.gather("x", block=True), x))
# x here would be the client's x (sent with the function); Reference("x") is each engine's part
print("engine sums           ->", dv.apply_sync(lambda part: int(part.sum()), pcluster.Reference("x")))

try:
    rc[0].execute("1 / 0", block=True)
except pcluster.RemoteError as e:
    print("remote error          ->", e)

ar = dv.apply(lambda: __import__("pcluster.engine").engine.engine_id)
print("non-blocking          ->", ar, "->", ar.get(timeout=10))
dv.block = True  # or block=True per call
print("dv.block = True       ->", dv.apply(lambda: "blocked"))
dv.block = False

ar = dv.execute("import time; print('working...'); time.sleep(1); print('done')")
time.sleep(0.8)
print("streamed while running ->", ar.stdout[0].strip())  # output arrives before the result
ar.wait(10)
print("stdout of engine 0    ->", ar.stdout[0].split())


async def in_asyncio():
    return await rc[1].apply_async(lambda: "awaited")


print("await                 ->", asyncio.run(in_asyncio()))

lv = rc.load_balanced_view()  # tasks go to whichever engine is free
squares = lv.map(lambda v: v * v, range(10_000), chunksize=500)
print("lv.map squares sum    ->", sum(squares.get(timeout=30)))
first = lv.apply(lambda: 1)
then = lv.apply(lambda: 2, after=[first], retries=1)
print("after= dependency     ->", then.get(timeout=10), "ran on engine", then.engine_id)
print("queue status          ->", {k: v for k, v in rc.queue_status().items() if k == "unassigned"})

t0 = time.perf_counter()
ars = [lv.apply_async(lambda: None) for _ in range(5000)]
rc.wait(ars, timeout=60)
print(f"5,000 tasks           -> {5000 / (time.perf_counter() - t0):,.0f} tasks/s")

t0 = time.perf_counter()
for _ in range(100):
    rc[0].apply_sync(lambda: None)
print(f"apply round trip      -> {(time.perf_counter() - t0) * 1e4:.0f} us")

rc.shutdown()
print("job shut down")
