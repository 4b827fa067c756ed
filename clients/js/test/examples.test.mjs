// The examples run as written (they read TASKHUB_URL, default ws://127.0.0.1:8080 = `make serve`).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hub } from './hub.mjs';

const run = promisify(execFile);
const EXAMPLES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'examples');

describe('examples', { timeout: 90000 }, () => {
  let hub;
  const example = (name) => run(process.execPath, [path.join(EXAMPLES, name)], {
    env: { ...process.env, TASKHUB_URL: hub.url },
    timeout: 60000,
  });

  before(async () => { hub = await new Hub({ store: 'memory://' }).start(); });
  after(async () => { await hub.destroy(); });

  it('mailer.mjs (seeds 001/004)', async () => {
    const { stdout } = await example('mailer.mjs');
    assert.match(stdout, /progress \{ sent: 3, total: 3 \}/);
    assert.match(stdout, /result \{ sent: 3 \}/);
    assert.match(stdout, /express not sent/);
    assert.match(stdout, /true TaskFailed .*SMTP server said 421/);
  });

  it('atium-worker.mjs (seed 000: credit, chains, events)', async () => {
    const { stdout } = await example('atium-worker.mjs');
    assert.match(stdout, /last step results 100 101 102 103 104 105 106 107 108 109/);
    assert.doesNotMatch(stdout, /missing/);
  });

  it('events.mjs', async () => {
    const { stdout } = await example('events.mjs');
    assert.doesNotMatch(stdout, /never printed/);
    assert.match(stdout, /receivers after unsubscribe: 0/);
  });
});
