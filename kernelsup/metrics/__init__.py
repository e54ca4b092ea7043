"""Layer 5 (beside control), Prometheus metrics for a running supervisor (``[metrics]
listen``). May import :mod:`kernelsup.api` and every layer below it, not control.

:mod:`kernelsup.metrics.collect` keeps the registry: counters fed by the event bus and by
every request's outcome, and a collector that reads status at scrape time.
:mod:`kernelsup.metrics.http` serves it at ``/metrics`` on trio, in the supervisor's own
loop. ``kernelsup run`` starts it when configured; an embedded supervisor runs
:func:`serve` in its nursery.
"""

from __future__ import annotations

from kernelsup.metrics.collect import Metrics
from kernelsup.metrics.http import serve

__all__ = ["Metrics", "serve"]
