// The pickup leaves before the handler runs: a handler that blocks the event loop (here a
// synchronous wait) still counts as started. Another process watches the task and sees its
// `start` event while the worker's loop is blocked, then releases it through a file; if the
// pickup waited for the handler's loop turn to end, nobody would release it (the test times out).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '../index.mjs';
import { Hub } from './hub.mjs';

const quiet = { warn() {}, error() {} };
const INDEX = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'index.mjs');

const WATCHER = `
import { Client } from ${JSON.stringify(INDEX)};
import { writeFileSync } from 'node:fs';
const [url, marker] = process.argv.slice(1);
const c = new Client(url, { name: 'watcher', logger: null });
const w = await c.watch('block:*').started();
console.log('ready');
for await (const e of w) if (e.type === 'start') break;
writeFileSync(marker, 'started');
await c.close({ grace: 0 });
`;

describe('a handler that blocks its event loop', { timeout: 60000 }, () => {
  let hub;
  let worker;
  let publisher;

  before(async () => {
    hub = await new Hub().start();
    worker = new Client(hub.url, { name: 'blocker', logger: quiet });
    publisher = new Client(hub.url, { name: 'web', logger: quiet });
  });
  after(async () => {
    await worker.close({ grace: 0 });
    await publisher.close({ grace: 0 });
    await hub.destroy();
  });

  it('is started at the hub before the handler runs', async () => {
    const marker = path.join(hub.dir, 'started');
    const child = spawn(process.execPath, ['--input-type=module', '-e', WATCHER, hub.url, marker], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((resolve) => child.stdout.once('data', resolve));
    await worker.sub('block:run', () => {
      while (!existsSync(marker)) { /* blocks the event loop until the watcher saw 'start' */ }
      return 'unblocked';
    });
    assert.equal(await publisher.pub('block:run', null).getResult(), 'unblocked');
    await new Promise((resolve) => child.once('exit', resolve));
  });
});
