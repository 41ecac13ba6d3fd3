"""Child processes that never outlive their parent."""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in the child (``preexec_fn``): Linux sends it SIGTERM when the parent dies, even by
    SIGKILL, so ``spark-control up`` leaves no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
