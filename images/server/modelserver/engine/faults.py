"""What an engine error means: one request's problem, or a device that is gone.

A CUDA out-of-memory error or a bad input fails the request that caused it; the device is
fine. Some CUDA errors are sticky instead: after a device-side assert or an illegal memory
access every later kernel on that context fails, so the only cure is a new process. The
engine then marks itself broken, /health turns 503 and the kubelet's liveness probe
restarts the pod.
"""

from __future__ import annotations

import torch

# CUDA errors that poison the context (cudaErrorAssert, IllegalAddress, LaunchFailure,
# ECCUncorrectable, ...): matched on the message, which is all torch gives us
FATAL_MARKERS = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "uncorrectable ecc",
    "misaligned address",
    "illegal instruction",
    "cuda error: an illegal",
    "cudaerrorlaunchfailure",
)


class EngineBroken(Exception):
    """The device cannot run anything any more; the reason is the message."""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def fatal_reason(exc: BaseException) -> str | None:
    """The reason the device is unusable if `exc` is a known sticky CUDA error, else None."""
    text = str(exc).lower()
    if any(marker in text for marker in FATAL_MARKERS):
        return f"sticky device error: {describe(exc)}"
    return None


def probe(device: torch.device) -> None:
    """A trivial op on the device, synchronised: raises if the device is unusable."""
    torch.ones(1, device=device).add_(1).item()
