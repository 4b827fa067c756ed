// The Node.js client against a hub: N tasks round trip, Node publisher + Node worker, and the
// Python client's pair (benchmarks/taskhub_bench.py) against a fresh hub of the same kind in
// the same run, so the two figures compare.
//
//   (cd clients/js && npm ci)      # once: the client's dependency (ws)
//   node benchmarks/node_bench.mjs [--n 5000] [--concurrency 64] [--store memory://] [--no-python]
//
// Every part runs in a process of its own, as in benchmarks/run.py: the hub (the repo venv's
// `taskhub serve`), one worker process, one publisher process. The workload is the same as
// run.py's: ~100-byte JSON payloads that the worker returns as the result; the publisher warms
// up with 200 tasks, then publishes all N at once and collects every result.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.dirname(HERE);
const VENV_BIN = path.join(ROOT, '.venv', 'bin');
const ACTION = 'bench:echo';
const FILLER = 'x'.repeat(40);
const payload = (i) => ({ id: i, text: FILLER, tags: ['bench', 'echo'], ok: true });

const { values: args } = parseArgs({
  options: {
    role: { type: 'string', default: 'main' },
    url: { type: 'string' },
    n: { type: 'string', default: '5000' },
    concurrency: { type: 'string', default: '64' },
    warmup: { type: 'string', default: '200' },
    store: { type: 'string', default: 'memory://' },
    'no-python': { type: 'boolean', default: false },
  },
});

async function client(name) {
  const { Client } = await import('../clients/js/index.mjs');
  const c = new Client(args.url, { name });
  await c.connect();
  return c;
}

async function worker() {
  const c = await client('bench-worker');
  await c.sub(ACTION, (task) => task.getPayload(), { concurrency: Number(args.concurrency), group: 'bench' });
  console.log(JSON.stringify({ kind: 'event', event: 'ready' }));
  process.on('SIGTERM', () => c.close({ grace: 0 }).then(() => {
    console.log(JSON.stringify({ kind: 'cpu', seconds: cpuSeconds() }));
    process.exit(0);
  }));
}

function cpuSeconds() {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/** CPU seconds a process used so far (Linux /proc; clock ticks are 100 Hz there). */
function procCpu(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

async function burst(c, n, offset) {
  const start = performance.now();
  const handles = [];
  for (let i = offset; i < offset + n; i++) handles.push(c.pub(ACTION, payload(i)));
  let errors = 0;
  const results = await Promise.all(handles.map((h) => h.getResult(null)));
  results.forEach((r, k) => { if (!r || r.id !== offset + k) errors += 1; });
  return { seconds: (performance.now() - start) / 1000, errors };
}

async function publisher() {
  const c = await client('bench-publisher');
  await burst(c, Number(args.warmup), 0);
  const n = Number(args.n);
  const cpu0 = cpuSeconds();
  const { seconds, errors } = await burst(c, n, 20_000_000);
  const cpu = cpuSeconds() - cpu0;
  console.log(JSON.stringify({ kind: 'result', n, seconds, tasks_per_s: n / seconds, errors, cpu_seconds: cpu }));
  await c.close();
}

// --- the orchestrator -------------------------------------------------------------------------
function freePort() {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

const children = new Set();
process.on('exit', () => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL'); });

function start(cmd, argv, env = {}) {
  const proc = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  proc.lines = [];
  let buf = '';
  proc.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try { proc.lines.push(JSON.parse(line)); } catch { /* not ours */ }
      proc.emit('line');
    }
  });
  proc.exited = new Promise((resolve) => proc.once('close', resolve)); // after stdout is read
  return proc;
}

function until(proc, test) {
  return new Promise((resolve, reject) => {
    const check = () => { const hit = proc.lines.find(test); if (hit) resolve(hit); };
    proc.on('line', check);
    proc.exited.then((code) => reject(new Error(`process exited (${code}) before it was ready`)));
    check();
  });
}

async function hub() {
  const port = await freePort();
  const proc = start(path.join(VENV_BIN, 'taskhub'),
    ['serve', '--host', '127.0.0.1', '--port', String(port), '--store', args.store], { TASKHUB_LOG: 'warning' });
  for (;;) {
    try { if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) break; } catch { /* starting */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, url: `ws://127.0.0.1:${port}` };
}

async function round(label, workerCmd, publisherCmd) {
  const h = await hub();
  const w = start(...workerCmd(h.url));
  await until(w, (l) => l.event === 'ready');
  const hubCpu0 = procCpu(h.proc.pid);
  const workerCpu0 = procCpu(w.pid);
  const p = start(...publisherCmd(h.url));
  const result = await until(p, (l) => l.kind === 'result');
  // Whole-run CPU of the hub and the worker (warm-up included), next to the burst's wall time.
  const hubCpu = procCpu(h.proc.pid) - hubCpu0;
  const workerCpu = procCpu(w.pid) - workerCpu0;
  const pubCpu = procCpu(p.pid);
  await p.exited;
  w.kill('SIGTERM');
  await w.exited;
  h.proc.kill('SIGTERM');
  await h.proc.exited;
  const rate = Math.round(result.tasks_per_s ?? result.throughput);
  const wall = result.seconds ?? result.burst_seconds;
  console.log(`${label.padEnd(34)} N=${result.n}  ${rate.toLocaleString('en')} tasks/s  errors=${result.errors ?? 0}  ` +
    `CPU s: hub ${hubCpu.toFixed(2)}, worker ${workerCpu.toFixed(2)}, publisher ${pubCpu.toFixed(2)}; burst wall ${wall.toFixed(2)} s`);
  return rate;
}

async function main() {
  const me = fileURLToPath(import.meta.url);
  const common = ['--n', args.n, '--concurrency', args.concurrency, '--warmup', args.warmup];
  console.log(`hub store ${args.store}, worker concurrency ${args.concurrency}, one worker and one publisher process`);
  await round('node publisher + node worker', (url) => [process.execPath, [me, '--role', 'worker', '--url', url, ...common]],
    (url) => [process.execPath, [me, '--role', 'publish', '--url', url, ...common]]);
  if (!args['no-python']) {
    const py = path.join(VENV_BIN, 'python');
    const script = path.join(HERE, 'taskhub_bench.py');
    await round('python publisher + python worker', (url) => [py, [script, 'worker', '--url', url, '--concurrency', args.concurrency]],
      (url) => [py, [script, 'publish', '--url', url, '--n', args.n, '--seq', '1', '--warmup', args.warmup]]);
  }
}

const roles = { main, worker, publish: publisher };
try {
  await roles[args.role]();
} catch (err) {
  console.error(err);
  process.exit(1); // the 'exit' handler stops the hub and workers this run started
}
