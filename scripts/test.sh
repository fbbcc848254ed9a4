#!/usr/bin/env bash
# Every test, from a fresh Debian 12 machine as root: packages, build, then
#   ctest  - Catch2 unit tests, the MPI program at several sizes, docs checks;
#   pytest - end-to-end tests against real mpirun jobs (tests/python);
#   pytest - the same program on a two-node SLURM cluster simulated on this machine, across
#            hosts, with sshd for tunnels (tests/cluster; it starts and stops its daemons);
#   the fuzzers for a bounded time and the sanitizer build (tests/fuzz/run.sh), when present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The build tree's package, whatever an earlier `cmake --install` left in /usr/local.
export PATH="$PWD/build/bin:$PATH" PYTHONPATH="$PWD/build/python${PYTHONPATH:+:$PYTHONPATH}"
(cd build && ctest --output-on-failure -j 2 --timeout 300)
/usr/bin/python3 -m pytest tests/python -q -p no:cacheprovider
/usr/bin/python3 -m pytest tests/cluster -q -p no:cacheprovider
if [ -f tests/fuzz/run.sh ]; then bash tests/fuzz/run.sh; fi
