// Package failure classifies the errors of calls to Redis for the redlock
// package and its command: which ones retrying cannot fix.
package failure

import (
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// permanentPrefixes start the error replies that retrying cannot fix: a
// denied authentication or permission, a wrong type, an unknown command, or
// a script the server rejects. A script's command that the user's ACL
// denies fails as "ERR The user executing the script can't run this
// command" on Redis 7. OOM, LOADING, BUSY, TRYAGAIN and the like are
// transient.
var permanentPrefixes = []string{
	"NOAUTH", "WRONGPASS", "NOPERM", "WRONGTYPE", "ERR unknown command",
	"ERR Error running script", "ERR user_script", "ERR Error compiling script",
	"ERR The user executing the script",
}

// Permanent reports whether err holds an error that retrying cannot fix: an
// error reply from Redis with one of permanentPrefixes, or a closed go-redis
// client. Timeouts, refused connections and transient error replies are not.
func Permanent(err error) bool {
	if errors.Is(err, redis.ErrClosed) {
		return true
	}
	var redisErr redis.Error
	if !errors.As(err, &redisErr) {
		return false
	}
	msg := redisErr.Error()
	for _, prefix := range permanentPrefixes {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}
