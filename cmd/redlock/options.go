//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// flagOption is a library option and the flag, as given, that set it.
type flagOption struct {
	flag   string // such as "-ttl 3ms"
	option redlock.Option
}

// errNeverDials is the dial error of the client that checkOptions builds.
var errNeverDials = errors.New("the client that checks options never dials")

// checkOptions reports options that the library rejects, such as a TTL too
// small to leave any validity, so that they are a usage error and not a
// failure: Dial reports them as it reports a bad URL. The library checks its
// options when it builds a Client, which does not contact the servers; this
// builds one over a client that cannot dial and closes it unused. Each
// option is checked alone first, so that the message names its flag. The
// Mutex takes no options of its own, and its name is checked by validName.
func checkOptions(opts []flagOption) error {
	all := make([]redlock.Option, 0, len(opts))
	for _, o := range opts {
		if err := probe(o.option); err != nil {
			return fmt.Errorf("%s: %s", o.flag, oneLine(err))
		}
		all = append(all, o.option)
	}
	if err := probe(all...); err != nil {
		return fmt.Errorf("flags rejected together: %s", oneLine(err))
	}
	return nil
}

// probe builds a Client with opts over a client that never dials.
func probe(opts ...redlock.Option) error {
	rc := redis.NewClient(&redis.Options{
		Addr: "options.invalid:0",
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			return nil, errNeverDials
		},
	})
	defer rc.Close()
	client, err := redlock.New([]redis.UniversalClient{rc}, opts...)
	if err != nil {
		return err
	}
	return client.Close()
}

// oneLine returns err's text without the library's prefix, its joined
// errors on one line.
func oneLine(err error) string {
	return oneLineText(strings.ReplaceAll(trimPrefix(err), "\nredlock: ", "\n"))
}
