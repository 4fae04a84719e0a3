#!/usr/bin/env bash
# The wheels a GPU machine without network needs for tools/gpu_acceptance.sh (`make
# gpu-wheels`, run where PyPI is reachable): everything the project needs beyond what
# that machine brings (Python 3.12, torch 2.11 with its CUDA libraries, Triton), for
# CPython 3.12 on manylinux x86_64, and mamba-ssm built here without compiling (its
# Triton SSD kernels need no compiled code) and installed there without its
# dependencies (tilelang, quack-kernels, nvidia-cutlass-dsl: several GB the SSD path
# never uses). NumPy and torch's own dependencies are left out (torch brings them).
#   bash tools/gpu_wheels.sh [OUT]          (default build/gpu-wheels; limit GPU_WHEELS_MB=60)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
PYVER=${GPU_PYTHON_VERSION:-3.12}
LIMIT_MB=${GPU_WHEELS_MB:-60}
MAMBA_SSM=${MAMBA_SSM:-mamba-ssm==2.3.2.post1}
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64)
# Left out: what the GPU machine has (torch, its CUDA libraries and dependencies,
# Triton, NumPy); what only command-line tools and downloads use (hf-xet, typer, rich,
# ...); and SciPy (34 MiB, over what a run carries: speechbrain imports it, so the
# machine must bring it; GPU_WHEELS_KEEP=scipy carries it where the limit allows).
SKIP='torch|triton|nvidia-.*|cuda-.*|numpy|sympy|mpmath|networkx|jinja2|markupsafe'
SKIP+='|typing-extensions|filelock|fsspec|setuptools|hf-xet|typer|click|rich|pygments'
SKIP+='|markdown-it-py|mdurl|shellingham|annotated-doc|scipy'
SKIP="^(${SKIP})$"
KEEP="^(${GPU_WHEELS_KEEP:-none})$"
rm -rf "$OUT"
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" tools/gpu_acceptance.py requirements > "$work/requirements.txt"
# The closure of the requirements for that Python (metadata only), then the wheels of
# what the machine lacks, one by one and without dependencies.
"$PY" -m pip install -q --dry-run --ignore-installed --report "$work/report.json" \
    "${TARGET[@]}" --target "$work/target" -r "$work/requirements.txt"
"$PY" - "$work/report.json" "$SKIP" "$KEEP" > "$work/pins.txt" <<'EOF'
import json, re, sys
report, skip, keep = json.load(open(sys.argv[1])), re.compile(sys.argv[2]), re.compile(sys.argv[3])
for item in report["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-").replace(".", "-")
    if keep.match(name) or not skip.match(name):
        print(f"{name}=={item['metadata']['version']}")
EOF
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$OUT" -r "$work/pins.txt"
# mamba-ssm: its source, built into a wheel here without compiling CUDA code.
"$PY" -m pip install -q "setuptools>=61" wheel packaging ninja
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "$PY" -m pip wheel -q --no-deps \
    --no-build-isolation -w "$OUT" "$MAMBA_SSM"
ls -1 "$OUT" > "$OUT/CONTENTS.txt"
size=$(du -sm "$OUT" | cut -f1)
echo "$OUT: $(ls "$OUT"/*.whl | wc -l) wheels, ${size} MiB"
if [ "$size" -gt "$LIMIT_MB" ]; then
    echo "error: ${size} MiB is more than GPU_WHEELS_MB=${LIMIT_MB} MiB (what a run can carry)" >&2
    ls -S -s --block-size=M "$OUT" | head -8 >&2
    exit 1
fi
