package redlockotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/seed62cefe0a/redlock"
)

// The attribute keys.
const (
	outcomeKey  = attribute.Key("redlock.outcome")
	causeKey    = attribute.Key("redlock.cause")
	nameKey     = attribute.Key("redlock.name")
	attemptsKey = attribute.Key("redlock.attempts")
	tokenKey    = attribute.Key("redlock.token")
	kindKey     = attribute.Key("redlock.kind")
	// addressKey is the semantic conventions' name for a server's address.
	addressKey = attribute.Key("server.address")
)

// The outcomes of acquire.duration and hold.duration. extend.duration uses
// redlock.ExtendOutcome's String.
const (
	outcomeAcquired = "acquired"
	outcomeNoQuorum = "no_quorum"
	outcomeTaken    = "taken"
	outcomeCanceled = "canceled"
	outcomeError    = "error"
	outcomeReleased = "released"
	outcomeLost     = "lost"
)

// acquireOutcome names why an acquiring call returned err, nil for success.
// A missed quorum is named first, since it is the one an operator can fix;
// an ended context last, since it is often only how long the caller agreed
// to wait for a lock that was taken.
func acquireOutcome(err error) string {
	switch {
	case err == nil:
		return outcomeAcquired
	case errors.Is(err, redlock.ErrNoQuorum):
		return outcomeNoQuorum
	case errors.Is(err, redlock.ErrTaken):
		return outcomeTaken
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return outcomeCanceled
	}
	return outcomeError
}

// attrs is one attribute set, with the measurement options that carry it
// made once, so that recording with it allocates nothing.
type attrs struct {
	kvs    []attribute.KeyValue
	record []metric.RecordOption
	add    []metric.AddOption
}

func newAttrs(kvs ...attribute.KeyValue) *attrs {
	opt := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return &attrs{kvs: kvs, record: []metric.RecordOption{opt}, add: []metric.AddOption{opt}}
}

// withName returns a's set plus the lock's name, made for one measurement.
func (a *attrs) withName(name string) metric.MeasurementOption {
	kvs := make([]attribute.KeyValue, len(a.kvs), len(a.kvs)+1)
	copy(kvs, a.kvs)
	return metric.WithAttributeSet(attribute.NewSet(append(kvs, nameKey.String(name))...))
}

// attrSets holds the sets of every fixed attribute value of one kind of
// lock, each with redlock.kind, made once.
type attrSets struct {
	none     *attrs            // redlock.kind alone
	acquire  map[string]*attrs // by outcome
	released *attrs            // hold.duration
	lost     *attrs            // hold.duration
	extend   []*attrs          // by redlock.ExtendOutcome
	cause    []*attrs          // by redlock.LossCause
	kind     attribute.KeyValue
}

func newAttrSets(k redlock.Kind) *attrSets {
	kind := kindKey.String(k.String())
	s := &attrSets{
		none:     newAttrs(kind),
		acquire:  map[string]*attrs{},
		released: newAttrs(kind, outcomeKey.String(outcomeReleased)),
		lost:     newAttrs(kind, outcomeKey.String(outcomeLost)),
		kind:     kind,
	}
	for _, o := range []string{outcomeAcquired, outcomeNoQuorum, outcomeTaken, outcomeCanceled, outcomeError} {
		s.acquire[o] = newAttrs(kind, outcomeKey.String(o))
	}
	for o := range redlock.ExtendFailed + 1 {
		s.extend = append(s.extend, newAttrs(kind, outcomeKey.String(o.String())))
	}
	for c := range redlock.LostDisowned + 1 {
		s.cause = append(s.cause, newAttrs(kind, causeKey.String(c.String())))
	}
	return s
}

// kindSets holds the attrSets of every kind the core had when this package
// was built, by redlock.Kind.
type kindSets []*attrSets

func newKindSets() kindSets {
	var sets kindSets
	for k := range redlock.KindElection + 1 {
		sets = append(sets, newAttrSets(k))
	}
	return sets
}

// of returns the sets of kind k; those of a kind the core added after this
// package was built are made on the spot.
func (s kindSets) of(k redlock.Kind) *attrSets {
	if int(k) < len(s) {
		return s[k]
	}
	return newAttrSets(k)
}

// extendOutcome returns the set of o; one the core added after this
// package was built is made on the spot.
func (s *attrSets) extendOutcome(o redlock.ExtendOutcome) *attrs {
	if int(o) < len(s.extend) {
		return s.extend[o]
	}
	return newAttrs(s.kind, outcomeKey.String(o.String()))
}

// lossCause returns the set of c, as extendOutcome does.
func (s *attrSets) lossCause(c redlock.LossCause) *attrs {
	if int(c) < len(s.cause) {
		return s.cause[c]
	}
	return newAttrs(s.kind, causeKey.String(c.String()))
}
