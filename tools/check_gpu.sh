#!/usr/bin/env bash
# Stops `make install` where an NVIDIA driver is present but the installed torch cannot
# use the GPU: training would otherwise run on the CPU without a word. Prints the
# driver version and the command that installs a matching torch.
#   bash tools/check_gpu.sh PYTHON
# The PyPI torch 2.11 wheels are CUDA 13.0 builds, which need driver 580 or newer;
# PyTorch's own index has CUDA 12.8 builds of the same version for drivers from 525
# (CUDA 12's minor-version compatibility; 570 or newer recommended).
set -u
PY=${1:-python3}
command -v nvidia-smi > /dev/null 2>&1 || exit 0
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2> /dev/null | head -n 1)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1)
"$PY" - << 'EOF' && exit 0
import sys
import torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
build=$("$PY" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)" 2> /dev/null)
major=${driver%%.*}
{
    echo "error: this machine has an NVIDIA GPU (${gpu:-unknown}, driver ${driver:-unknown}),"
    echo "but torch ${build:-(not importable)} cannot use it: training would run on the CPU."
    if [ -z "$driver" ]; then
        echo "nvidia-smi does not answer: check that the NVIDIA driver is loaded (nvidia-smi)."
    elif [ "$major" -ge 580 ] 2> /dev/null; then
        echo "The driver supports CUDA 13: check CUDA_VISIBLE_DEVICES and that the driver"
        echo "is loaded (nvidia-smi), then run make install again."
    elif [ "$major" -ge 525 ] 2> /dev/null; then
        echo "torch's CUDA 13 build needs driver 580 or newer. Install the CUDA 12.8 build:"
        echo "  $PY -m pip install --force-reinstall torch==2.11.0 torchaudio==2.11.0 \\"
        echo "      --index-url https://download.pytorch.org/whl/cu128"
        echo "(or update the driver to 580 or newer), then run make install again."
    else
        echo "Driver $driver is older than any CUDA build of torch 2.11 supports (525):"
        echo "update the NVIDIA driver (580 or newer for the default build)."
    fi
} >&2
exit 1
