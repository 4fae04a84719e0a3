"""Where the fused kernels come from, and the one decision between fused and PyTorch.

Every op of :mod:`cald_speech.mixers.ops` asks :func:`use_fused` whether to run its
fused kernel. The answer depends on the requested path (argument, else
``$CALD_SSD_IMPL``, else ``"auto"``), on whether the kernel can be imported, and on
where the inputs live; the decision and its reason are logged once per process.

Kernels:

- ``"ssd"``: mamba-ssm's Triton SSD scan ``mamba_chunk_scan_combined``. A full
  (compiled) mamba-ssm install is used as it is. A no-compile install
  (``MAMBA_SKIP_CUDA_BUILD=TRUE``) has no ``selective_scan_cuda``, which
  ``mamba_ssm/__init__.py`` imports, so ``import mamba_ssm`` fails although the Triton
  kernels need no compiled code: then the package is entered without running its
  top-level ``__init__`` (only Mamba-1's selective scan is missing that way).
- ``"conv"``: causal-conv1d's CUDA kernel ``causal_conv1d_fn`` (optional; without it
  the depthwise convolution runs in PyTorch, also when ``impl="fused"``).

``"auto"`` uses a fused kernel only for CUDA tensors. Under Triton's interpreter
(``TRITON_INTERPRET=1`` in the environment before ``triton`` is imported) a forced
``impl="fused"`` also runs the Triton kernels on CPU tensors: slow, but it executes the
very kernel code a GPU runs, which is how the parity tests check it without a GPU.

Example
-------
>>> import torch
>>> resolve_impl("torch")
'torch'
>>> use_fused("ssd", "torch", torch.zeros(1))
False
"""

import functools
import importlib
import importlib.util
import logging
import os
import sys
import types
from dataclasses import dataclass

from cald_speech.errors import ConfigError

logger = logging.getLogger(__name__)

IMPL_ENV = "CALD_SSD_IMPL"
IMPLS = ("auto", "torch", "fused")
_LOGGED = set()


def resolve_impl(impl=None):
    """Returns the requested kernel path: the argument, else ``$CALD_SSD_IMPL``, else auto.

    Arguments
    ---------
    impl : str or None
        ``"auto"``, ``"torch"`` or ``"fused"``.

    Returns
    -------
    str

    Example
    -------
    >>> resolve_impl(" Fused ")
    'fused'
    """
    impl = impl or os.environ.get(IMPL_ENV) or "auto"
    impl = impl.strip().lower()
    if impl not in IMPLS:
        raise ConfigError(
            f"unknown SSD kernel '{impl}' (from argument or ${IMPL_ENV}); "
            f"use one of {', '.join(IMPLS)}"
        )
    return impl


def triton_interpreter():
    """True when Triton's interpreter is switched on (``TRITON_INTERPRET=1``).

    Example
    -------
    >>> isinstance(triton_interpreter(), bool)
    True
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


@dataclass(frozen=True)
class Kernel:
    """A fused kernel and where it came from; ``fn`` is ``None`` when it cannot be used.

    Arguments
    ---------
    name : str
        ``"ssd"`` or ``"conv"``.
    fn : callable or None
        The kernel.
    origin : str
        Where ``fn`` was imported from, or why it is unavailable.
    triton : bool
        A Triton kernel (runs under Triton's interpreter) rather than a CUDA extension.
    """

    name: str
    fn: object
    origin: str
    triton: bool

    @property
    def available(self):
        """True when the kernel could be imported."""
        return self.fn is not None


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "unknown version"


def _import_without_top_level(package, module):
    """Imports ``package.module`` without executing ``package/__init__.py``.

    The package is entered as a plain namespace over its own folder, so its
    submodules import each other as usual. Nothing is done if the package is already
    imported (then the normal import is used).
    """
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"No module named '{package}'", name=package)
        # Left-overs of a failed full import would point at the failed package.
        for name in [n for n in sys.modules if n.startswith(package + ".")]:
            del sys.modules[name]
        shell = types.ModuleType(package)
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        shell.__file__ = spec.origin
        shell.__package__ = package
        shell.__cald_shell__ = True  # entered without its __init__
        sys.modules[package] = shell
    return importlib.import_module(f"{package}.{module}")


@functools.cache
def load_kernel(name):
    """Imports a fused kernel once: ``"ssd"`` (mamba-ssm) or ``"conv"`` (causal-conv1d).

    Returns
    -------
    Kernel
        With ``fn=None`` and the reason in ``origin`` when it cannot be imported.

    Example
    -------
    >>> load_kernel("ssd").name
    'ssd'
    """
    if name == "conv":
        try:
            from causal_conv1d import causal_conv1d_fn
        except Exception as exc:  # ImportError, or a broken CUDA extension
            return Kernel(name, None, f"causal-conv1d is not importable ({exc})", False)
        return Kernel(name, causal_conv1d_fn,
                      f"causal_conv1d {_version('causal-conv1d')} (CUDA)", False)
    if name != "ssd":
        raise ValueError(f"unknown kernel '{name}' (use 'ssd' or 'conv')")
    module, attr = "ops.triton.ssd_combined", "mamba_chunk_scan_combined"
    origin = f"mamba_ssm {_version('mamba-ssm')}, Triton"
    try:
        importlib.import_module("mamba_ssm")
    except Exception as exc:
        if importlib.util.find_spec("mamba_ssm") is None:
            return Kernel(name, None, "mamba-ssm is not installed", True)
        # A no-compile install: its __init__ imports the missing selective_scan_cuda.
        note = f"package imported without its __init__, which failed: {exc}"
        try:
            fn = getattr(_import_without_top_level("mamba_ssm", module), attr)
        except Exception as exc2:
            return Kernel(name, None, f"mamba-ssm is installed but its Triton SSD kernel "
                          f"does not import ({type(exc2).__name__}: {exc2})", True)
        return Kernel(name, fn, f"{origin}; {note}", True)
    try:
        fn = getattr(importlib.import_module(f"mamba_ssm.{module}"), attr)
    except Exception as exc:
        return Kernel(name, None, f"mamba-ssm's Triton SSD kernel does not import "
                      f"({type(exc).__name__}: {exc})", True)
    return Kernel(name, fn, f"{origin}; full install", True)


def _log_once(level, key, msg):
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.log(level, msg)


_WHAT = {"ssd": ("SSD scan", "the chunked PyTorch scan"),
         "conv": ("depthwise conv", "PyTorch shifted multiply-adds")}
_INSTALL = ("install the 'cuda' extra (make install on a GPU machine; see the README, "
            "'Fused GPU kernels')")


def use_fused(name, impl, tensor, kernel=None):
    """The one decision: run the fused kernel ``name`` on ``tensor``'s device, or not.

    Arguments
    ---------
    name : str
        ``"ssd"`` or ``"conv"``.
    impl : str or None
        Requested path (see :func:`resolve_impl`).
    tensor : torch.Tensor
        An input of the op (its device decides).
    kernel : Kernel, optional
        The kernel to decide about (default :func:`load_kernel` ``(name)``).

    Returns
    -------
    bool
        ``True``: call ``load_kernel(name).fn``.

    Raises
    ------
    ConfigError
        ``impl="fused"`` for the SSD scan where it cannot run.

    Example
    -------
    >>> import torch
    >>> use_fused("ssd", "auto", torch.zeros(1))  # CPU tensors: PyTorch
    False
    """
    impl = resolve_impl(impl)
    what, fallback = _WHAT[name]
    if impl == "torch":
        _log_once(logging.INFO, (name, "torch", impl), f"{what}: {fallback} (impl='torch')")
        return False
    kernel = kernel if kernel is not None else load_kernel(name)
    on_device = tensor.is_cuda or (impl == "fused" and kernel.triton and triton_interpreter())
    if kernel.available and on_device:
        where = "CUDA" if tensor.is_cuda else "CPU under Triton's interpreter"
        _log_once(logging.INFO, (name, "fused", where),
                  f"{what}: fused kernel on {where} ({kernel.origin})")
        return True
    if impl == "fused" and name == "ssd":
        reason = (kernel.origin if not kernel.available else
                  f"the inputs are on {tensor.device.type}, not on a CUDA device")
        raise ConfigError(
            f"fused {what} forced (impl='fused' or ${IMPL_ENV}=fused) but {reason}; "
            f"{_INSTALL} and run on a GPU (or TRITON_INTERPRET=1 to run the Triton "
            "kernel on CPU, slowly), or use impl='torch'"
        )
    if not tensor.is_cuda:
        _log_once(logging.INFO, (name, "torch", "cpu"),
                  f"{what}: {fallback} (inputs on {tensor.device.type}; the fused "
                  "kernel runs on CUDA)")
    else:  # on a GPU without the kernel: say so loudly, once
        level = logging.WARNING if name == "ssd" else logging.INFO
        _log_once(level, (name, "torch", "missing"),
                  f"{what}: {fallback} on CUDA because {kernel.origin}; {_INSTALL}")
    return False


__all__ = ["IMPL_ENV", "IMPLS", "Kernel", "load_kernel", "resolve_impl",
           "triton_interpreter", "use_fused"]
