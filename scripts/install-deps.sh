#!/usr/bin/env bash
# Installs every Debian package pcluster needs to build, test and benchmark (Debian 12, as root).
# Idempotent: apt-get skips what is already there.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config
  openmpi-bin libopenmpi-dev libboost-mpi-dev libboost-serialization-dev
  libcereal-dev pybind11-dev catch2 nlohmann-json3-dev libssl-dev libcli11-dev libspdlog-dev
  python3 python3-dev python3-numpy python3-mpi4py python3-cloudpickle python3-pytest
  python3-pytest-timeout python3-tqdm python3-ipython python3-ipykernel python3-nbclient
  python3-nbformat python3-ipyparallel python3-distributed python3-joblib
  python3-tk xvfb xauth
  # the plot of bench/scale_bench.py
  python3-matplotlib
  # a two-node SLURM cluster simulated on this machine (tests/cluster), ssh tunnels
  slurmctld slurmd slurm-client munge iproute2 openssh-server openssh-client
  # fuzzing and sanitizer builds
  clang-14 libfuzzer-14-dev
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
