// The Node client and the Python client (src/taskhub/client/) on one hub, both ways round.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '../index.mjs';
import { Hub, PYTHON } from './hub.mjs';

const quiet = { warn() {}, error() {} };
const SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'interop.py');

function python(...args) {
  const proc = spawn(PYTHON, [SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.out = '';
  proc.err = '';
  proc.stdout.on('data', (d) => { proc.out += d; });
  proc.stderr.on('data', (d) => { proc.err += d; });
  proc.done = new Promise((resolve) => proc.once('exit', resolve));
  return proc;
}

function line(proc) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const nl = proc.out.indexOf('\n');
      if (nl >= 0) { proc.stdout.off('data', check); resolve(proc.out.slice(0, nl)); }
    };
    proc.stdout.on('data', check);
    proc.once('exit', (code) => reject(new Error(`python exited with ${code}: ${proc.err}`)));
    check();
  });
}

describe('Python and Node on one hub', { timeout: 60000 }, () => {
  let hub;
  let node;
  const procs = [];

  before(async () => {
    hub = await new Hub().start();
    node = new Client(hub.url, { name: 'node', logger: quiet });
  });
  after(async () => {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
    await Promise.all(procs.map((p) => p.done));
    await node.close({ grace: 0 });
    await hub.destroy();
  });

  it('a Python publisher and a Node worker', async () => {
    await node.sub('interop:node', async (task) => {
      await task.update({ node: 'working' });
      return { node_got: await task.getPayload(), publisher: task.publisher };
    });
    const py = python('pub', hub.url, 'interop:node', JSON.stringify({ n: 1, s: 'ø' }));
    procs.push(py);
    const out = JSON.parse(await line(py));
    assert.deepEqual(out, {
      result: { node_got: { n: 1, s: 'ø' }, publisher: 'py-pub' },
      updates: [{ node: 'working' }],
    });
  });

  it('a Node publisher and a Python worker', async () => {
    const py = python('worker', hub.url, 'interop:python');
    procs.push(py);
    assert.equal(await line(py), 'ready');
    const updates = [];
    const result = await node.pub('interop:python', [1, 'two', null]).on('update', (u) => updates.push(u)).getResult();
    assert.deepEqual(result, { python_got: [1, 'two', null] });
    assert.deepEqual(updates, [{ py: 'working' }]);
  });
});
