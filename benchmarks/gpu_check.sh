#!/usr/bin/env bash
# Everything that needs a CUDA machine, in one run: the gpu-marked tests, a CUDA training
# run through the CLI, and the GPU section of the benchmark. Results go to $OUT (the device
# tool's output folder) or ./gpu-out. Meant for a machine without network access that has
# torch, numpy, matplotlib, typer, rich, pytest and setuptools installed:
#
#     bash benchmarks/gpu_check.sh            # from the repository root
#
# Each step records its exit status in $OUT/status.txt and the script goes on, so that one
# failure does not hide the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
status="$out/status.txt"
: > "$status"

step() {  # step NAME COMMAND...: run it, its output to $out/NAME.txt, its status to $status
    local name=$1
    shift
    local start=$SECONDS
    "$@" > "$out/$name.txt" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" >> "$status"
}

step nvidia-smi nvidia-smi
# the console script the end-to-end tests run (no network: no dependencies, no isolation)
step install python3 -m pip install --no-deps --no-build-isolation -e .
step versions python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
step pytest-gpu python3 -m pytest -m gpu -q -p no:cacheprovider
step demo-cuda python3 -m cli train --device cuda --out "$out/demo-run" --json
step benchmark python3 benchmarks/run.py --only gpu --out "$out/RESULTS-gpu.md"
cat "$status"
