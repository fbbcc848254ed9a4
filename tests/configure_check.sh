#!/usr/bin/env bash
# ctest: configuring against an interpreter that cannot import numpy/mpi4py/cloudpickle must stop
# with an error that names the fix. The interpreter: Debian's python without site-packages (-S).
set -u
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n' > "$tmp/python3"
chmod +x "$tmp/python3"
out=$(cmake -S "$src" -B "$tmp/build" -G Ninja -DPython_EXECUTABLE="$tmp/python3" -DPCLUSTER_BUILD_TESTS=OFF 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "cannot import numpy," <<<"$out" \
   && grep -q "Python_EXECUTABLE=/usr/bin/python3" <<<"$out"; then
  echo "CONFIGURE CHECK OK"
else
  echo "configure with a bare interpreter: rc=$rc"; echo "$out" | tail -20
  exit 1
fi
