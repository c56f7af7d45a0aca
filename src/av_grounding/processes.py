"""Child processes that end with their parent, which the kernel ends even on SIGKILL."""

from __future__ import annotations

import ctypes
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def signal_on_parent_death(signum: int) -> bool:
    """Ask the kernel to send this process ``signum`` when its parent dies, SIGKILL of the parent
    included (Linux ``prctl(PR_SET_PDEATHSIG)``); False where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum) == 0
