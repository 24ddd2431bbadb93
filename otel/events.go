package redlockotel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/seed62cefe0a/redlock"
)

// The Observer's funcs. Each records what its event says and returns: the
// core calls them on the goroutines that drive the locks' timing.

func (o *observer) acquired(ev redlock.AcquiredEvent) {
	sets := o.kinds.of(ev.Kind)
	ctx, span := o.startSpan(ev.Context, "redlock.acquire", ev.Start)
	if span.IsRecording() {
		span.SetAttributes(sets.kind, nameKey.String(ev.Name), attemptsKey.Int(ev.Attempts), outcomeKey.String(outcomeAcquired))
		if ev.Token != 0 {
			span.SetAttributes(tokenKey.Int64(int64(ev.Token)))
		}
	}
	endSpan(span, ev.Start.Add(ev.Wait), nil)
	o.record(ctx, o.acquireDuration, ev.Wait, sets.acquire[outcomeAcquired], ev.Name)
	o.add(ctx, o.held, 1, sets.none, ev.Name)
}

func (o *observer) notAcquired(ev redlock.NotAcquiredEvent) {
	outcome := outcomeError
	if ev.Err != nil {
		outcome = acquireOutcome(ev.Err)
	}
	sets := o.kinds.of(ev.Kind)
	ctx, span := o.startSpan(ev.Context, "redlock.acquire", ev.Start)
	if span.IsRecording() {
		span.SetAttributes(sets.kind, nameKey.String(ev.Name), attemptsKey.Int(ev.Attempts), outcomeKey.String(outcome))
	}
	endSpan(span, ev.Start.Add(ev.Wait), ev.Err)
	o.record(ctx, o.acquireDuration, ev.Wait, sets.acquire[outcome], ev.Name)
}

// released records the end of a holding that Unlock found held. One that
// had been lost, before Unlock or as its release found, was counted by lost,
// whose event came first.
func (o *observer) released(ev redlock.ReleasedEvent) {
	outcome := outcomeReleased
	if ev.Lost {
		outcome = outcomeLost
	}
	sets := o.kinds.of(ev.Kind)
	ctx, span := o.startSpan(ev.Context, "redlock.release", ev.Start)
	if span.IsRecording() {
		span.SetAttributes(sets.kind, nameKey.String(ev.Name), outcomeKey.String(outcome))
	}
	endSpan(span, ev.Start.Add(ev.Duration), ev.Err)
	if ev.Lost {
		return
	}
	o.record(ctx, o.holdDuration, ev.Held, sets.released, ev.Name)
	o.add(ctx, o.held, -1, sets.none, ev.Name)
}

// lost records the end of a holding when it is lost, whether or not
// Unlock follows, so that hold.duration measures how long it was held.
func (o *observer) lost(ev redlock.LostEvent) {
	ctx, sets := context.Background(), o.kinds.of(ev.Kind)
	o.add(ctx, o.lostCount, 1, sets.lossCause(ev.Cause), ev.Name)
	o.record(ctx, o.holdDuration, ev.Held, sets.lost, ev.Name)
	o.add(ctx, o.held, -1, sets.none, ev.Name)
}

func (o *observer) extended(ev redlock.ExtendedEvent) {
	o.record(context.Background(), o.extendDuration, ev.Latency, o.kinds.of(ev.Kind).extendOutcome(ev.Outcome), ev.Name)
}

func (o *observer) nodeError(ev redlock.NodeErrorEvent) {
	o.nodeErrors.Add(context.Background(), 1, o.node(ev.Addr).add...)
}

// node returns the attribute set of the node at addr, made on its first
// error; a node whose address is unknown gets none.
func (o *observer) node(addr string) *attrs {
	o.nodesMu.RLock()
	a, ok := o.nodes[addr]
	o.nodesMu.RUnlock()
	if ok {
		return a
	}
	o.nodesMu.Lock()
	defer o.nodesMu.Unlock()
	if a, ok := o.nodes[addr]; ok {
		return a
	}
	a = o.plain
	if addr != "" {
		a = newAttrs(addressKey.String(addr))
	}
	o.nodes[addr] = a
	return a
}

// startSpan starts a span named spanName at start, the child of parent's
// span if it has one. Its kind is the default, internal.
func (o *observer) startSpan(parent context.Context, spanName string, start time.Time) (context.Context, trace.Span) {
	if parent == nil {
		parent = context.Background()
	}
	return o.tracer.Start(parent, spanName, trace.WithTimestamp(start))
}

// endSpan ends span at end, with the status Error and err if err is not
// nil.
func endSpan(span trace.Span, end time.Time, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err, trace.WithTimestamp(end))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End(trace.WithTimestamp(end))
}

// record records d, in seconds, on h with a's attributes, plus the lock's
// name if the Observer was asked for it.
func (o *observer) record(ctx context.Context, h metric.Float64Histogram, d time.Duration, a *attrs, lock string) {
	if o.lockName {
		h.Record(ctx, d.Seconds(), a.withName(lock))
		return
	}
	h.Record(ctx, d.Seconds(), a.record...)
}

// adder is a counter or an up-down counter.
type adder interface {
	Add(ctx context.Context, incr int64, options ...metric.AddOption)
}

// add adds n to c with a's attributes, plus the lock's name if the Observer
// was asked for it.
func (o *observer) add(ctx context.Context, c adder, n int64, a *attrs, lock string) {
	if o.lockName {
		c.Add(ctx, n, a.withName(lock))
		return
	}
	c.Add(ctx, n, a.add...)
}
