"""Kernels of the mixers: each op has a fused path, a pure-PyTorch path and one dispatch.

Example
-------
>>> from cald_speech.mixers.ops import ssd_scan, causal_conv1d
>>> callable(ssd_scan) and callable(causal_conv1d)
True
"""

from cald_speech.mixers.ops.conv import causal_conv1d
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
    "resolve_impl",
    "ssd_chunk_scan_torch",
    "ssd_scan",
    "ssd_sequential_ref",
]
