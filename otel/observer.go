package redlockotel

import (
	"errors"
	"sync"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/seed62cefe0a/redlock"
)

// ScopeName is the instrumentation scope of the Meter and the Tracer that
// NewObserver uses: this package's import path.
const ScopeName = "github.com/seed62cefe0a/redlock/otel"

// durationBuckets are the bucket boundaries, in seconds, advised for the
// duration histograms; a View of the SDK can replace them. Extensions and uncontended acquisitions
// take about a round trip, so the small end is fine-grained; holds and
// waits can last minutes.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// NewObserver returns an Observer, for redlock.WithObserver, that records
// the metrics and spans listed in the package doc through the providers of
// the options. It makes the instruments once, here: the Observer's funcs
// only record, without blocking, and share the instruments, so one Observer
// may serve any number of Clients and Mutexes. It returns an error if the
// MeterProvider failed to make an instrument; the Observer it returns with
// that error still works, with whatever instruments the provider returned.
func NewObserver(opts ...Option) (*redlock.Observer, error) {
	o, err := newObserver(newConfig(opts))
	return &redlock.Observer{
		Acquired:    o.acquired,
		NotAcquired: o.notAcquired,
		Released:    o.released,
		Extended:    o.extended,
		Lost:        o.lost,
		NodeError:   o.nodeError,
	}, err
}

type observer struct {
	lockName bool
	tracer   trace.Tracer

	acquireDuration metric.Float64Histogram
	holdDuration    metric.Float64Histogram
	extendDuration  metric.Float64Histogram
	lostCount       metric.Int64Counter
	nodeErrors      metric.Int64Counter
	held            metric.Int64UpDownCounter

	kinds   kindSets
	plain   *attrs // no attributes: a node's error whose address is unknown
	nodesMu sync.RWMutex
	nodes   map[string]*attrs // by a node's address, made on its first error
}

func newObserver(cfg config) (*observer, error) {
	o := &observer{
		lockName: cfg.lockName,
		tracer:   cfg.tracerProvider.Tracer(ScopeName),
		kinds:    newKindSets(),
		plain:    newAttrs(),
		nodes:    map[string]*attrs{},
	}
	meter := cfg.meterProvider.Meter(ScopeName)
	var errs []error
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(durationBuckets...))
		errs = append(errs, err)
		return h
	}
	o.acquireDuration = histogram("redlock.acquire.duration", "How long acquiring calls took, by outcome.")
	o.holdDuration = histogram("redlock.hold.duration", "How long locks were held, until released or lost.")
	o.extendDuration = histogram("redlock.extend.duration", "How long each lock's extension took to be decided, by outcome.")
	var err error
	o.lostCount, err = meter.Int64Counter("redlock.lost", metric.WithUnit("{lock}"), metric.WithDescription("Locks lost while held, by cause."))
	errs = append(errs, err)
	o.nodeErrors, err = meter.Int64Counter("redlock.node.errors", metric.WithUnit("{error}"), metric.WithDescription("Calls to a node that failed or did not answer in time."))
	errs = append(errs, err)
	o.held, err = meter.Int64UpDownCounter("redlock.held", metric.WithUnit("{lock}"), metric.WithDescription("Locks held now."))
	errs = append(errs, err)
	return o, errors.Join(errs...)
}
