// Starts and stops a real hub (`taskhub serve` from the repo's venv) for the tests: a free port
// on loopback, a SQLite store in a temp directory, an optional config file with credentials.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PYTHON = process.env.TASKHUB_PYTHON || path.join(REPO, '.venv/bin/python');
const TASKHUB = process.env.TASKHUB_BIN || path.join(REPO, '.venv/bin/taskhub');

const LIVE = new Set();
function reap() {
  for (const proc of LIVE) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
}
process.once('exit', reap);
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.once(sig, () => { reap(); process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGHUP' ? 1 : 15)); });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export class Hub {
  /** config: TOML text of a config file (credentials), or null for open access on loopback. */
  constructor({ config = null, store = 'sqlite' } = {}) {
    this.dir = mkdtempSync(path.join(tmpdir(), 'taskhub-js-'));
    this.configText = config;
    this.storeUrl = store === 'sqlite' ? `sqlite:///${path.join(this.dir, 'hub.db')}` : store;
    this.proc = null;
    this.port = null;
    this.log = '';
  }

  get url() { return `ws://127.0.0.1:${this.port}`; }

  get httpUrl() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    if (!existsSync(TASKHUB)) throw new Error(`${TASKHUB} is missing: run 'make test' (it builds the venv) first`);
    if (this.port === null) this.port = await freePort();
    const args = ['serve', '--host', '127.0.0.1', '--port', String(this.port), '--store', this.storeUrl];
    if (this.configText !== null) {
      const file = path.join(this.dir, 'hub.toml');
      writeFileSync(file, this.configText);
      args.push('--config', file);
    }
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('TASKHUB_')) delete env[k];
    this.proc = spawn(TASKHUB, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    // A test run that ends without stop() (a timed-out test, a crash, the runner's signal)
    // must not leave it running.
    const proc = this.proc;
    LIVE.add(proc);
    proc.once('exit', () => LIVE.delete(proc));
    this.proc.stdout.on('data', (d) => { this.log += d; });
    this.proc.stderr.on('data', (d) => { this.log += d; });
    const exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
    this.exited = exited;
    // Ready when /healthz answers; a hub that exits first fails the start with its output.
    for (;;) {
      const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 50))]);
      if (code !== undefined) throw new Error(`the hub exited with ${code}:\n${this.log}`);
      try {
        const res = await fetch(`${this.httpUrl}/healthz`);
        if (res.ok) return this;
      } catch { /* not listening yet */ }
    }
  }

  async stop() {
    if (!this.proc) return;
    const proc = this.proc;
    this.proc = null;
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 15000);
      await this.exited;
      clearTimeout(timer);
    }
  }

  async destroy() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
