"""The peak resident memory of this process (seer-bench's rows and their probe processes)."""

from __future__ import annotations

import resource


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark. Linux: VmHWM, which starts afresh at exec;
    ru_maxrss would carry over the parent's peak from the fork."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
