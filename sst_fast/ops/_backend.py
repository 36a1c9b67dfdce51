"""Which implementation serves an op call: the backend registry and its selection rules.

A backend is a named set of op implementations plus the device types it runs on. The
choice, from strongest to weakest: :func:`use_backend` (a context manager, per thread and
task), the ``SST_FAST_BACKEND`` environment variable, then ``auto`` (the first available
backend for the inputs' device, in :data:`PREFERENCE` order, that takes the op's arguments: the CUDA
kernels take relation kernels up to 7x7, a larger one goes to the next).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Callable, Iterator

import torch

KNOWN_BACKENDS = ("reference", "cpp", "cuda", "triton")
ENV_VAR = "SST_FAST_BACKEND"
# Fastest first, per device type; "reference" serves every device.
PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")}


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    device_types: frozenset[str] | None  # None: any device
    ops: dict[str, Callable]
    max_kernel_size: int | None = None  # the largest relation kernel its kernels take; None: any

    def serves(self, device_type: str) -> bool:
        return self.device_types is None or device_type in self.device_types

    def takes(self, kernel_size: int | None) -> bool:
        return self.max_kernel_size is None or kernel_size is None or kernel_size <= self.max_kernel_size


_registry: dict[str, Backend] = {}
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("sst_fast_backend", default=None)


def register_backend(
    name: str,
    ops: dict[str, Callable],
    device_types: tuple[str, ...] | None = None,
    max_kernel_size: int | None = None,
) -> None:
    """Make ``name`` available; :mod:`sst_fast.ops` calls this for each kernel library once it has loaded. Internal:
    the backends are the fixed set :data:`KNOWN_BACKENDS`, each backed by this package's own kernels.
    ``max_kernel_size``: the largest relation kernel (k of a [Co, 2C, k, k] weight) the backend's kernels take;
    ``auto`` sends a larger one to the next backend."""
    if name not in KNOWN_BACKENDS:
        raise ValueError(f"register_backend: unknown backend {name!r}; known: {KNOWN_BACKENDS}")
    devices = None if device_types is None else frozenset(device_types)
    _registry[name] = Backend(name, devices, dict(ops), max_kernel_size)


def backends(device_type: str | None = None) -> list[str]:
    """The backends available in this installation, e.g. ``['reference', 'cpp']``; with ``device_type`` ("cpu",
    "cuda"), those that run on it. A library built with CUDA kernels lists ``cuda`` on a machine without a GPU."""
    return [
        name
        for name in KNOWN_BACKENDS
        if name in _registry and (device_type is None or _registry[name].serves(device_type))
    ]


def _check_name(name: str, source: str) -> str:
    if name == "auto" or name in _registry:
        return name
    if name in KNOWN_BACKENDS:
        raise RuntimeError(
            f"{source}: backend {name!r} is not built in this installation; available: {backends()}"
        )
    raise ValueError(f"{source}: unknown backend {name!r}; choose 'auto' or one of {KNOWN_BACKENDS}")


def current_backend() -> str:
    """The backend requested now: a :func:`use_backend` name, else ``$SST_FAST_BACKEND``, else ``'auto'``."""
    forced = _forced.get()
    if forced is not None:
        return forced
    return _check_name(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Serve every op call inside the ``with`` block from backend ``name`` (or ``'auto'``)."""
    token = _forced.set(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def resolve(op: str, device_type: str, kernel_size: int | None = None) -> Callable:
    """The implementation of ``op`` for tensors on ``device_type`` (and a relation kernel of ``kernel_size``,
    where the op has one) under the current choice.

    Under ``torch.compile`` the choice is made once, when the function is traced.
    """
    return _registry[_serving(op, device_type, kernel_size)].ops[op]


@torch.compiler.assume_constant_result
def _serving(op: str, device_type: str, kernel_size: int | None = None) -> str:
    requested = current_backend()
    if requested == "auto":
        for name in PREFERENCE.get(device_type, ("reference",)):
            backend = _registry.get(name)
            if backend is not None and backend.serves(device_type) and op in backend.ops and backend.takes(kernel_size):
                return name
        return "reference"
    backend = _registry[requested]
    if not backend.serves(device_type):
        raise RuntimeError(
            f"{op}: backend {requested!r} runs on {sorted(backend.device_types or ())}, "
            f"but the inputs are on {device_type!r}"
        )
    if op not in backend.ops:
        raise RuntimeError(f"{op}: backend {requested!r} does not implement this op; use 'auto' or 'reference'")
    if not backend.takes(kernel_size):
        raise RuntimeError(
            f"{op}: backend {requested!r} takes relation kernels of size up to {backend.max_kernel_size}, got "
            f"{kernel_size}; 'auto' sends larger ones to the next backend of {PREFERENCE.get(device_type)}"
        )
    return requested
