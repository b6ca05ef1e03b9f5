// Starts `apogee standalone` (APOGEE_BIN) on free loopback ports for the
// suite, or uses COMPAT_GRPC_ENDPOINT (e.g. Apache's proxy) when set.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** A logger that keeps the client quiet (its default writes under $HOME). */
const say = (...args) => {
  if (process.env.COMPAT_VERBOSE) console.error(...args);
};
export const quietLogger = { info: say, warn: say, debug: say, error: say };

// The client's background streams (telemetry, heartbeats) report a dropped
// connection as an uncaught error when it closes idle channels or shuts
// down; that is the client tidying up, not a test failure.
process.on('uncaughtException', (e) => {
  if (/\b14 UNAVAILABLE\b|\b1 CANCELLED\b/.test(String(e))) {
    say('ignored client background error:', String(e));
    return;
  }
  throw e;
});

export async function startApogee() {
  if (process.env.COMPAT_GRPC_ENDPOINT) {
    return { endpoints: process.env.COMPAT_GRPC_ENDPOINT, namesrv: process.env.COMPAT_NAMESRV, stop() {} };
  }
  const bin = process.env.APOGEE_BIN || '../../target/debug/apogee';
  const dir = mkdtempSync(join(tmpdir(), 'apogee-node-'));
  const ns = await freePort();
  let listen = await freePort();
  // The VIP port is listenPort - 2: keep it free too.
  while (listen < 1100) listen = await freePort();
  const grpc = await freePort();
  const child = spawn(bin, [
    'standalone',
    '--namesrv-port', String(ns),
    '--listen-port', String(listen),
    '--set', `storePathRootDir=${join(dir, 'store')}`,
    '--set', 'brokerIP1=127.0.0.1',
    '--set', `grpcServerPort=${grpc}`,
    '--set', 'transactionTimeOut=1000',
    '--set', 'transactionCheckInterval=500',
    '--set', 'diskMaxUsedSpaceRatio=100',
    '--set', 'diskSpaceWarningLevelRatio=100',
    '--set', 'diskSpaceCleanForciblyRatio=100',
  ], { stdio: ['ignore', 'pipe', process.env.COMPAT_VERBOSE ? 'inherit' : 'ignore'] });
  await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`apogee did not start: ${out}`)), 30000);
    child.stdout.on('data', (d) => {
      out += d.toString();
      if (out.includes('apogee grpc listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => reject(new Error(`apogee exited (${code}): ${out}`)));
  });
  child.stdout.resume();
  return {
    endpoints: `127.0.0.1:${grpc}`,
    namesrv: `127.0.0.1:${ns}`,
    bin,
    stop() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `apogee admin <args>` against the suite's NameServer. */
export function admin(broker, command, ...args) {
  const r = spawnSync(broker.bin, ['admin', command, '-n', broker.namesrv, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`apogee admin ${command} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

export function unique(prefix) {
  return `${prefix}-${Math.random().toString(16).slice(2, 10)}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Receives until `done(all)` or `ms` passed; acks each message unless told not to. */
export async function receiveUntil(consumer, { ms = 20000, invisible = 10000, ack = true, done }) {
  const all = [];
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const got = await consumer.receive(16, invisible);
    for (const m of got) {
      all.push(m);
      if (ack) await consumer.ack(m);
    }
    if (done && done(all)) break;
  }
  return all;
}
