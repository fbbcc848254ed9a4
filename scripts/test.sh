#!/usr/bin/env bash
# Every test, from a fresh Debian 12 machine as root: packages, build, then
#   ctest  - Catch2 unit tests and the MPI program at -n 1, 2, 3 and 5;
#   pytest - end-to-end tests against real mpirun jobs (tests/python).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The build tree's package, whatever an earlier `cmake --install` left in /usr/local.
export PATH="$PWD/build/bin:$PATH" PYTHONPATH="$PWD/build/python${PYTHONPATH:+:$PYTHONPATH}"
(cd build && ctest --output-on-failure -j 2 --timeout 300)
/usr/bin/python3 -m pytest tests/python -q -p no:cacheprovider
