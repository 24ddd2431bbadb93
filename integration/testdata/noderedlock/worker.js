// A node-redlock worker for redlock's interop test (integration/interop_test.go).
// It takes the lock named INTEROP_NAME on the masters at INTEROP_PORTS over and
// over until INTEROP_MS have passed, with INTEROP_WORKERS loops at once. Inside
// each critical section it counts itself in on the counter server, as the Go
// clients of the test do: a count above one is an overlap.
"use strict";
const Redis = require("ioredis");
const { default: Redlock, ExecutionError } = require("redlock");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const ports = env("INTEROP_PORTS").split(",").map(Number);
const name = env("INTEROP_NAME");
const label = env("INTEROP_LABEL");
const counterPort = Number(env("INTEROP_COUNTER_PORT"));
const endAt = Date.now() + Number(env("INTEROP_MS"));
const workers = Number(env("INTEROP_WORKERS"));
const retryDelay = Number(env("INTEROP_RETRY_MS"));

const options = { host: "127.0.0.1", maxRetriesPerRequest: 1, enableOfflineQueue: true };
const masters = ports.map((port) => new Redis({ ...options, port }));
const counter = new Redis({ ...options, port: counterPort });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function section() {
  const inside = await counter.incr("interop:inside");
  if (inside > 1) await counter.incr("interop:overlaps");
  await sleep(2);
  await counter.decr("interop:inside");
  await counter.incr(`interop:sections:${label}`);
}

async function loop(redlock) {
  let sections = 0;
  while (Date.now() < endAt) {
    let lock;
    try {
      lock = await redlock.acquire([name], 1000);
    } catch (err) {
      if (err instanceof ExecutionError) continue; // not acquired in its retries
      throw err;
    }
    await section();
    sections++;
    try {
      await lock.release();
    } catch (err) {
      if (!(err instanceof ExecutionError)) throw err;
    }
  }
  return sections;
}

async function main() {
  const loops = [];
  for (let i = 0; i < workers; i++) {
    const redlock = new Redlock(masters, { retryCount: 100, retryDelay, retryJitter: retryDelay });
    redlock.on("error", () => {}); // refusals while others hold the lock
    loops.push(loop(redlock));
  }
  const counts = await Promise.all(loops);
  process.stdout.write(JSON.stringify({ sections: counts.reduce((a, b) => a + b, 0) }) + "\n");
  await Promise.all([...masters, counter].map((c) => c.quit()));
}

main().catch((err) => {
  process.stderr.write(`worker failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
