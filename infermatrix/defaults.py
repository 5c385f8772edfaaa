"""The core's own hook implementations, each ``trylast`` so that a plugin's answer wins.

Registered by every host (pytest's run and :func:`infermatrix.host.plugin_manager`).
"""

from __future__ import annotations

import pluggy

from infermatrix.api.types import MemoryReport, Session

hookimpl = pluggy.HookimplMarker("pytest")


@hookimpl(trylast=True)
def pytest_infermatrix_memory(session: Session, baseline_rss_bytes: int) -> MemoryReport:
    """Host memory only: RSS now minus before the case, and the process's peak RSS."""
    import resource

    from infermatrix.case.runner import process_rss_bytes

    rss = process_rss_bytes()
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return MemoryReport(
        host_peak_rss_bytes=peak,
        host_peak_rss_added_bytes=max(0, peak - baseline_rss_bytes),
        host_rss_delta_bytes=rss - baseline_rss_bytes,
        source="psutil rss (delta) + getrusage ru_maxrss (process peak)",
    )
