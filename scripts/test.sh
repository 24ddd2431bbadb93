#!/usr/bin/env bash
# Runs every test of redlock: the root package, the OpenTelemetry module and
# the integration suite on real Redis containers. It installs and starts what
# it needs on a Debian machine with Go: redis-server, docker.io, nodejs and
# npm from apt, a Docker daemon with networking off (containers use the
# host's loopback), a small Redis image built from the local redis-server
# binary, since no registry may be reachable, and node-redlock from npm for
# the interop test.
#
# Environment:
#   REDLOCK_REDIS_IMAGE     image to run (default redlock-redis:local, built here);
#                           e.g. redis:7 where a registry is reachable
#   REDLOCK_REQUIRE_DOCKER  1 makes the integration suite fail, not skip, without
#                           Docker (set automatically when CI is set)
#   REDLOCK_REQUIRE_NODE    1 makes the interop test with node-redlock fail, not
#                           skip, without node and its packages (set when CI is set)
#   REDLOCK_SKIP_DOCKER     1 runs only the root package's tests
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -n "${CI:-}" ]; then export REDLOCK_REQUIRE_DOCKER=1 REDLOCK_REQUIRE_NODE=1; fi
export REDLOCK_REDIS_IMAGE="${REDLOCK_REDIS_IMAGE:-redlock-redis:local}"

install_packages() {
	local missing=()
	command -v redis-server >/dev/null || missing+=(redis-server)
	if [ "${REDLOCK_SKIP_DOCKER:-}" != 1 ]; then
		command -v dockerd >/dev/null || missing+=(docker.io)
		command -v node >/dev/null || missing+=(nodejs)
		command -v npm >/dev/null || missing+=(npm)
	fi
	[ ${#missing[@]} -eq 0 ] && return
	log "installing ${missing[*]}"
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

start_docker() {
	if docker info >/dev/null 2>&1; then return; fi
	log "starting dockerd (no bridge, no iptables; containers use host networking)"
	local logfile=/tmp/redlock-dockerd.log
	as_root sh -c "nohup dockerd --bridge=none --iptables=false --ip-masq=false >$logfile 2>&1 &"
	for _ in $(seq 1 60); do
		docker info >/dev/null 2>&1 && return
		sleep 0.5
	done
	log "dockerd did not answer within 30s; its log:"
	tail -n 30 "$logfile" >&2 || true
	return 1
}

# build_image makes a minimal image from Debian's redis-server binary and the
# shared libraries ldd lists, because no registry can be reached here.
build_image() {
	docker image inspect "$REDLOCK_REDIS_IMAGE" >/dev/null 2>&1 && return
	if [ "$REDLOCK_REDIS_IMAGE" != redlock-redis:local ]; then
		log "image $REDLOCK_REDIS_IMAGE is not present; trying docker pull"
		docker pull "$REDLOCK_REDIS_IMAGE"
		return
	fi
	log "building $REDLOCK_REDIS_IMAGE from $(command -v redis-server)"
	local root
	root=$(mktemp -d)
	local bin
	bin=$(readlink -f "$(command -v redis-server)")
	mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/data"
	cp "$bin" "$root/usr/local/bin/redis-server"
	ldd "$bin" | grep -oE '/[^ ]+' | while read -r lib; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	chmod 1777 "$root/tmp"
	tar -C "$root" -c . | docker import \
		-c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
		-c 'WORKDIR /data' \
		-c 'CMD ["redis-server"]' \
		- "$REDLOCK_REDIS_IMAGE" >/dev/null
	rm -rf "$root"
}

# install_node_worker installs the packages of the node-redlock worker that
# the interop test runs, as package-lock.json pins them.
install_node_worker() {
	local dir=integration/testdata/noderedlock
	[ -d "$dir/node_modules/redlock" ] && return
	log "installing node-redlock and ioredis for the interop test"
	(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

install_packages
if [ "${REDLOCK_SKIP_DOCKER:-}" != 1 ]; then
	if start_docker && build_image; then :; else
		log "Docker is unavailable; the integration suite will skip (or fail when REDLOCK_REQUIRE_DOCKER=1)"
	fi
	install_node_worker || log "npm could not install the node-redlock worker; its interop test will skip (or fail when REDLOCK_REQUIRE_NODE=1)"
fi

log "go vet"
go vet ./...
(cd integration && go vet ./...)
(cd benchmarks && go vet ./...)
(cd otel && go vet ./...)

log "go test -race (root package and examples)"
go test -race -count=1 ./...

log "go test -race (OpenTelemetry module, embedded servers)"
(cd otel && go test -race -count=1 ./...)

log "benchmark harness smoke run (short; see BENCHMARKS.md for real runs)"
(cd benchmarks && go run . -duration 200ms -many 200 >/dev/null)

if [ "${REDLOCK_SKIP_DOCKER:-}" != 1 ]; then
	log "go test -race (integration, real Redis containers)"
	(cd integration && go test -race -count=1 -timeout 15m ./...)
fi
