package redlockotel

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Option configures NewObserver.
type Option func(*config)

type config struct {
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
	lockName       bool
}

// newConfig applies opts over the defaults, which read the global
// providers at the time of the call.
func newConfig(opts []Option) config {
	cfg := config{meterProvider: otel.GetMeterProvider(), tracerProvider: otel.GetTracerProvider()}
	for _, opt := range opts {
		opt(&cfg)
	}
	return cfg
}

// WithMeterProvider sets the MeterProvider that makes the metrics'
// instruments. Default otel.GetMeterProvider() at the time NewObserver is
// called; a nil mp keeps that default.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.meterProvider = mp
		}
	}
}

// WithTracerProvider sets the TracerProvider that makes the spans. Default
// otel.GetTracerProvider() at the time NewObserver is called; a nil tp
// keeps that default.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tracerProvider = tp
		}
	}
}

// WithLockName adds the attribute redlock.name, the Mutex's name, to every
// metric that concerns one lock, so that each lock name gets series of its
// own. Leave it off where lock names are many or unbounded (one per user or
// per order, say): every name multiplies the number of series. Spans carry
// the name in any case. Default off.
func WithLockName() Option {
	return func(c *config) { c.lockName = true }
}
