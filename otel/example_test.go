package redlockotel_test

import (
	"log"

	"github.com/seed62cefe0a/redlock"
	redlockotel "github.com/seed62cefe0a/redlock/otel"
)

// The Observer reports to the global MeterProvider and TracerProvider, set
// beforehand with otel.SetMeterProvider and otel.SetTracerProvider, unless
// WithMeterProvider or WithTracerProvider names others.
func ExampleNewObserver() {
	observer, err := redlockotel.NewObserver()
	if err != nil {
		log.Fatal(err)
	}
	client, err := redlock.Dial([]string{
		"redis://127.0.0.1:6379", "redis://127.0.0.1:6380", "redis://127.0.0.1:6381",
	}, redlock.WithObserver(observer))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	m := client.NewMutex("report")
	m.Lock()
	defer m.Unlock()
	// … work under the lock, measured in redlock.hold.duration.
}
