#!/usr/bin/env bash
# The demo, from a fresh Debian 12 machine as root: packages, build, install (/usr/local), then a
# 4-engine job (`mpirun -n 5 pcluster`) and a client session against it (examples/demo.py),
# which shuts the job down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
cmake --install build >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
conn="$(mktemp -d)/connection.json"
echo "+ mpirun --enable-recovery -n 5 --oversubscribe pcluster --connection-file $conn &"
mpirun --enable-recovery -n 5 --oversubscribe pcluster --connection-file "$conn" &
job=$!
trap 'kill $job 2>/dev/null || true' EXIT
echo "+ /usr/bin/python3 examples/demo.py $conn"
/usr/bin/python3 examples/demo.py "$conn"
wait $job
echo "mpirun exited with status $?"
trap - EXIT
