package redlockotel

import (
	"context"
	"fmt"
	"log"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/seed62cefe0a/redlock"
)

func TestMain(m *testing.M) {
	redis.SetLogger(dialLogFilter{})
	// go-redis redials in the background once dials failed; the goroutine
	// ends within a second of its client's Close.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// dialLogFilter drops go-redis's reports of failed dials, which the test of
// a stopped server causes, and prints the rest.
type dialLogFilter struct{}

func (dialLogFilter) Printf(_ context.Context, format string, v ...any) {
	if msg := fmt.Sprintf(format, v...); !strings.Contains(msg, "failed to dial") {
		log.Print("redis: ", msg)
	}
}

// servers starts n embedded Redis servers on 127.0.0.1 and returns clients
// to them.
func servers(t testing.TB, n int) ([]*miniredis.Miniredis, []redis.UniversalClient) {
	t.Helper()
	var mrs []*miniredis.Miniredis
	var clients []redis.UniversalClient
	for range n {
		mr := miniredis.RunT(t)
		// One dial per call, so that a stopped server fails calls at once.
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1})
		t.Cleanup(func() { rc.Close() })
		mrs = append(mrs, mr)
		clients = append(clients, rc)
	}
	return mrs, clients
}

func newClient(t testing.TB, clients []redis.UniversalClient, opts ...redlock.Option) *redlock.Client {
	t.Helper()
	c, err := redlock.New(clients, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// telemetry is an SDK MeterProvider and TracerProvider that keep what they
// get, and an Observer that reports to them.
type telemetry struct {
	reader   *sdkmetric.ManualReader
	spans    *tracetest.SpanRecorder
	tracers  *sdktrace.TracerProvider
	observer *redlock.Observer
}

func newTelemetry(t testing.TB, opts ...Option) *telemetry {
	t.Helper()
	tel := &telemetry{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	meters := sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	tel.tracers = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	t.Cleanup(func() {
		ctx := context.Background()
		meters.Shutdown(ctx)
		tel.tracers.Shutdown(ctx)
	})
	obs, err := NewObserver(append([]Option{WithMeterProvider(meters), WithTracerProvider(tel.tracers)}, opts...)...)
	if err != nil {
		t.Fatalf("NewObserver: %v", err)
	}
	tel.observer = obs
	return tel
}

// metrics collects what the reader has, by instrument name.
func (tel *telemetry) metrics(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	byName := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			t.Errorf("scope %q; want %q", sm.Scope.Name, ScopeName)
		}
		for _, m := range sm.Metrics {
			byName[m.Name] = m
		}
	}
	return byName
}

// metricsWhen collects until ready says the metrics are complete, for up to
// 5s, and returns the last collection: events that happen on other
// goroutines may be observed after the call that caused them returns.
func (tel *telemetry) metricsWhen(t *testing.T, ready func(map[string]metricdata.Metrics) bool) map[string]metricdata.Metrics {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ms := tel.metrics(t)
		if ready(ms) || time.Now().After(deadline) {
			return ms
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// endedSpans returns the ended spans named name.
func (tel *telemetry) endedSpans(name string) []sdktrace.ReadOnlySpan {
	var spans []sdktrace.ReadOnlySpan
	for _, s := range tel.spans.Ended() {
		if s.Name() == name {
			spans = append(spans, s)
		}
	}
	return spans
}

// histogram returns the data points of the histogram name.
func histogram(t *testing.T, ms map[string]metricdata.Metrics, name string) []metricdata.HistogramDataPoint[float64] {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		return nil
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T; want a float64 histogram", name, m.Data)
	}
	if m.Unit != "s" {
		t.Errorf("%s has unit %q; want s", name, m.Unit)
	}
	return h.DataPoints
}

// sum returns the data points of the counter or up-down counter name.
func sum(t *testing.T, ms map[string]metricdata.Metrics, name string) []metricdata.DataPoint[int64] {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		return nil
	}
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is a %T; want an int64 sum", name, m.Data)
	}
	return s.DataPoints
}

// attributeSets returns the attribute sets of the points of name, a
// histogram or a sum.
func attributeSets(t *testing.T, ms map[string]metricdata.Metrics, name string) []attribute.Set {
	t.Helper()
	var sets []attribute.Set
	switch data := ms[name].Data.(type) {
	case nil:
	case metricdata.Histogram[float64]:
		for _, p := range data.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Sum[int64]:
		for _, p := range data.DataPoints {
			sets = append(sets, p.Attributes)
		}
	default:
		t.Fatalf("%s is a %T", name, data)
	}
	return sets
}

// attr returns the value of key in set, or "" if it has none.
func attr(set attribute.Set, key attribute.Key) string {
	v, _ := set.Value(key)
	return v.Emit()
}

// histogramBy returns the point of points whose key is value, and whether
// there is one.
func histogramBy(points []metricdata.HistogramDataPoint[float64], key attribute.Key, value string) (metricdata.HistogramDataPoint[float64], bool) {
	for _, p := range points {
		if attr(p.Attributes, key) == value {
			return p, true
		}
	}
	return metricdata.HistogramDataPoint[float64]{}, false
}

// total adds up the values of points whose key is value, or of all points
// if key is "".
func total(points []metricdata.DataPoint[int64], key attribute.Key, value string) int64 {
	var n int64
	for _, p := range points {
		if key == "" || attr(p.Attributes, key) == value {
			n += p.Value
		}
	}
	return n
}

// waitDone waits up to 5s for ctx to end.
func waitDone(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}
