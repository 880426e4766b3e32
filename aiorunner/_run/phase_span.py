"""
The spans of a run's phases (``extract_metadata`` ... ``upload_traces``), made without the
SDK's per-span machinery.

Why: a run makes six of them, plus the monitor's events, and the SDK's ``Span`` costs
about 30 µs each before anything is exported (the sampler, a lock, ``BoundedAttributes``
cleaning every value at each ``set_attribute``, a ``ReadableSpan`` copy at ``end``).
Measured on 2 cores running trivial scripts back to back, the phase spans were about
0.7 ms of the runner's CPU per run, about 5 % of ``run_many``'s throughput. These spans
are ours, with values we build: :class:`PhaseSpan` keeps them in plain containers and
hands one ``ReadableSpan`` to the provider's span processor at ``end``, limits applied
there as the SDK would.

What the SDK would decide is decided the same way: a phase span is made this way only
under a recording, sampled root of the same trace, where every sampler aiorunner
configures (``_sampling``: the specification's, all parent-based or by trace id) samples
the child too. Anything else goes through ``tracer.start_span``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind
from opentelemetry.trace.status import Status, StatusCode

from .._context.errors import exception_attributes

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.util import types

__all__ = ["PhaseSpan", "PhaseSpans"]

_UNSET = Status(StatusCode.UNSET)


class PhaseSpans:
    """What the phase spans of one run share: its root and the provider's parts."""

    __slots__ = ("_ids", "_limits", "_plain", "_processor", "parent", "root", "root_ctx")

    def __init__(
        self,
        root: ReadableSpan,
        parent: SpanContext,
        root_ctx: Context,
        processor: SpanProcessor,
        ids: IdGenerator,
        limits: SpanLimits,
    ) -> None:
        self.root = root
        self.parent = parent
        self.root_ctx = root_ctx
        self._processor = processor
        self._ids = ids
        self._limits = limits
        # No value may be cut (the default): plain dicts go out as they are, unless
        # there are more of them than the limits allow.
        self._plain = (
            limits.max_span_attribute_length is None and limits.max_attribute_length is None
        )

    @classmethod
    def for_run(
        cls, tracer: object, root: trace.Span, root_ctx: Context, limits: SpanLimits | None
    ) -> PhaseSpans | None:
        """The shared parts, or None when the SDK's own spans must be used (no recording
        and sampled SDK root, or a tracer without the SDK's processor and id generator)."""
        processor = getattr(tracer, "span_processor", None)
        ids = getattr(tracer, "id_generator", None)
        if (
            limits is None
            or processor is None
            or ids is None
            or not isinstance(root, SdkSpan)
            or not root.is_recording()
        ):
            return None
        parent = root.context
        if parent is None or not parent.trace_flags.sampled:
            return None
        return cls(root, parent, root_ctx, processor, ids, limits)

    def start(
        self,
        name: str,
        *,
        attributes: Mapping[str, types.AttributeValue] | None = None,
        start_time: int | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> PhaseSpan:
        """A child of the run's root, started now (or at ``start_time``)."""
        parent = self.parent
        context = SpanContext(
            parent.trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=parent.trace_flags,
            trace_state=parent.trace_state,
        )
        span = PhaseSpan(self, name, context, kind, attributes, start_time or time.time_ns())
        self._processor.on_start(span, parent_context=self.root_ctx)  # type: ignore[arg-type]
        return span


class PhaseSpan(trace.Span):
    """A recording span of the OpenTelemetry API whose data stays in plain containers
    until :meth:`end` turns it into one ``ReadableSpan`` for the span processor."""

    def __init__(
        self,
        spans: PhaseSpans,
        name: str,
        context: SpanContext,
        kind: SpanKind,
        attributes: Mapping[str, types.AttributeValue] | None,
        start_time: int,
    ) -> None:
        self._spans = spans
        self.name = name
        self._context = context
        self.kind = kind
        self._attributes: dict[str, Any] = {}
        self._events: list[Event] = []
        self._status = _UNSET
        self.start_time = start_time
        self.end_time: int | None = None
        if attributes:
            self.set_attributes(attributes)

    # What span processors may read in on_start (aiorunner's reads ``name``), as on an
    # SDK span.
    @property
    def parent(self) -> SpanContext:
        return self._spans.parent

    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def attributes(self) -> Mapping[str, Any]:
        return self._attributes

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)

    @property
    def links(self) -> tuple[()]:
        return ()

    @property
    def status(self) -> Status:
        return self._status

    @property
    def resource(self) -> Any:
        return self._spans.root.resource

    @property
    def instrumentation_scope(self) -> Any:
        return self._spans.root.instrumentation_scope

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.end_time is not None:
            return
        # The SDK keeps sequences as tuples; our values are otherwise valid by making.
        self._attributes[key] = tuple(value) if isinstance(value, list) else value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self.end_time is not None:
            return
        self._events.append(
            Event(name, dict(attributes) if attributes else None, timestamp or time.time_ns())
        )

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The SDK's event without the deprecated exception.escaped (see _context.errors).
        event = exception_attributes(exception)
        if attributes:
            event.update(attributes)  # type: ignore[arg-type]
        self.add_event("exception", event, timestamp)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET changes nothing.
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or time.time_ns()
        spans = self._spans
        root = spans.root
        limits = spans._limits
        attributes: Any = self._attributes
        if not spans._plain or _over(len(attributes), limits.max_span_attributes):
            attributes = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=True,
                max_value_len=limits.max_span_attribute_length,
            )
        events: Any = [
            _bounded_event(event, limits)
            if not spans._plain or _over(len(event.attributes or ()), limits.max_event_attributes)
            else event
            for event in self._events
        ]
        if _over(len(events), limits.max_events):
            events = BoundedList.from_seq(limits.max_events, events)
        spans._processor.on_end(
            ReadableSpan(
                name=self.name,
                context=self._context,
                parent=spans.parent,
                resource=root.resource,
                attributes=attributes,
                events=events,
                kind=self.kind,
                status=self._status,
                start_time=self.start_time,
                end_time=self.end_time,
                instrumentation_scope=root.instrumentation_scope,
            )
        )


def _over(count: int, limit: int | None) -> bool:
    return limit is not None and count > limit


def _bounded_event(event: Event, limits: SpanLimits) -> Event:
    if not event.attributes:
        return event
    return Event(
        event.name,
        BoundedAttributes(
            limits.max_event_attributes,
            event.attributes,
            immutable=True,
            max_value_len=limits.max_attribute_length,  # what the SDK's add_event uses
        ),
        event.timestamp,
    )
