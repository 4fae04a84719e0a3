"""Kernels of the mixers: each op has a fused path, a pure-PyTorch path and one dispatch.

:mod:`~cald_speech.mixers.ops.fused` imports the fused kernels and decides, for every
call, which path runs (and logs why); :mod:`~cald_speech.mixers.ops.ssd` and
:mod:`~cald_speech.mixers.ops.conv` hold each op's PyTorch path and its reference;
:mod:`~cald_speech.mixers.ops.ssd_nograd` the scan's kernels for inference on CPU.

Example
-------
>>> from cald_speech.mixers.ops import ssd_scan, causal_conv1d
>>> callable(ssd_scan) and callable(causal_conv1d)
True
"""

from cald_speech.mixers.ops.conv import causal_conv1d
from cald_speech.mixers.ops.fused import load_kernel, triton_interpreter, use_fused
from cald_speech.mixers.ops.ssd import (
    fused_scan_available,
    resolve_impl,
    ssd_chunk_scan_torch,
    ssd_scan,
    ssd_sequential_ref,
)

__all__ = [
    "causal_conv1d",
    "fused_scan_available",
    "load_kernel",
    "resolve_impl",
    "ssd_chunk_scan_torch",
    "ssd_scan",
    "ssd_sequential_ref",
    "triton_interpreter",
    "use_fused",
]
