// Command example shows redlock's OpenTelemetry metrics: three workers take
// turns on one lock over three embedded Redis servers, with the Observer
// of package redlockotel reporting to the global MeterProvider, whose
// stdout exporter prints the metrics when the run is over.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/seed62cefe0a/redlock"
	redlockotel "github.com/seed62cefe0a/redlock/otel"
)

const (
	workers  = 3
	sections = 10 // per worker
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

// run makes the contended run and writes the metrics to w.
func run(w io.Writer) (err error) {
	exporter, err := stdoutmetric.New(stdoutmetric.WithWriter(w), stdoutmetric.WithPrettyPrint())
	if err != nil {
		return err
	}
	// The periodic reader exports once more when the provider shuts down,
	// after the deferred calls below have closed the lock's Client.
	meters := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exporter)))
	defer func() { err = errors.Join(err, meters.Shutdown(context.Background())) }()
	otel.SetMeterProvider(meters)

	observer, err := redlockotel.NewObserver()
	if err != nil {
		return err
	}
	var clients []redis.UniversalClient
	for range 3 {
		server, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer server.Close()
		rc := redis.NewClient(&redis.Options{Addr: server.Addr()})
		defer rc.Close()
		clients = append(clients, rc)
	}
	client, err := redlock.New(clients, redlock.WithObserver(observer))
	if err != nil {
		return err
	}
	defer client.Close()

	if err := contend(client); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d workers ran %d sections each under one lock\n", workers, sections)
	return nil
}

// contend runs the workers, each with its own Mutex on one lock name, and
// returns their errors.
func contend(client *redlock.Client) error {
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for i := range workers {
		wg.Go(func() {
			m := client.NewMutex("report")
			for range sections {
				err := m.Do(context.Background(), func(context.Context) error {
					time.Sleep(time.Millisecond) // the work done under the lock
					return nil
				})
				if err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
