#!/usr/bin/env bash
# Download (here, where pip has an index) the wheels run_on_device.sh installs on the offline GPU machine
# (Python 3.12, x86-64, torch 2.11 there). Versions: the ones the engine is tested with.
set -eu
cd "$(dirname "$0")"
mkdir -p wheels
PY=${PYTHON:-python3}
for spec in diffusers==0.42.1 peft==0.21.2 importlib_metadata==8.7.0 torchao==0.17.0; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d wheels "$spec"
done
ls -l wheels
