"""
The head sampler of a session, from ``config.sampler`` / ``config.sample_rate``.

The names and meanings are the OpenTelemetry specification's (``OTEL_TRACES_SAMPLER``):

=========================  ====================================================
``always_on``              record every trace
``always_off``             record none (runs still run and fill ``RunResult``)
``traceidratio``           record a trace when its id falls under the ratio
                           (``sample_rate``, or ``OTEL_TRACES_SAMPLER_ARG``)
``parentbased_*``          follow the parent's sampled flag when there is a
                           parent (``TRACEPARENT``, a carrier, the current span);
                           decide as ``always_on``/``always_off``/``traceidratio``
                           for a root
``tailbased``              record everything (``parentbased_always_on``), and let
                           the tail sampler in the export pipeline decide per run
                           once its root has ended (``aiorunner._export.tail_sampling``)
=========================  ====================================================

A run that is not sampled still runs and still has a valid trace id in ``RunResult``:
the SDK gives unsampled spans real ids, and children still get a traceparent (with
the sampled flag off) so the decision stays consistent down the process tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import sampling

if TYPE_CHECKING:
    from .._config import TracingConfig

__all__ = ["TAILBASED", "make_sampler"]

TAILBASED = "tailbased"


def make_sampler(config: TracingConfig) -> sampling.Sampler:
    """The head sampler for a resolved ``config``."""
    name = config.sampler or "parentbased_always_on"
    rate = float(config.sample_rate if config.sample_rate is not None else 1.0)
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(rate)
    if name == "parentbased_always_off":
        return sampling.ParentBased(sampling.ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return sampling.ParentBased(sampling.TraceIdRatioBased(rate))
    # parentbased_always_on, and tailbased: record everything a parent did not rule out;
    # the tail sampler decides later which runs leave.
    return sampling.ParentBased(sampling.ALWAYS_ON)
