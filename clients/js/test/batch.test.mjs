// Batched messages (docs/protocol.md §2): pubMany, the pubs of one loop turn in one `pubs`, a
// worker's batched `offers` each run once and its results sent as one `returns`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { Client, InvalidAction, InvalidOption, PermissionDenied } from '../index.mjs';
import { Hub } from './hub.mjs';

const quiet = { warn() {}, error() {} };
const msgs = (data) => { const m = JSON.parse(data.toString()); return Array.isArray(m) ? m : [m]; };

describe('batched messages against a hub', { timeout: 60000 }, () => {
  let hub;
  const clients = [];
  const client = (name) => { const c = new Client(hub.url, { name, logger: quiet }); clients.push(c); return c; };

  before(async () => { hub = await new Hub().start(); });
  after(async () => {
    await Promise.all(clients.map((c) => c.close({ grace: 0 })));
    await hub.destroy();
  });

  it('pubMany: 500 tasks all complete, each handler run once', async () => {
    const runs = new Map();
    await client('bw').sub('jsbatch:echo', (task) => {
      runs.set(task.id, (runs.get(task.id) || 0) + 1);
      return task.getPayload();
    }, { concurrency: 64 });
    const handles = client('bp').pubMany(Array.from({ length: 500 }, (_, i) => ['jsbatch:echo', { i }]));
    const results = await Promise.all(handles.map((h) => h.getResult()));
    assert.deepEqual(results, Array.from({ length: 500 }, (_, i) => ({ i })));
    assert.equal(runs.size, 500);
    assert.ok([...runs.values()].every((n) => n === 1));
  });

  it('a refused item fails only its own handle', async () => {
    await client('bw2').sub('jsbatch:two', async (task) => (await task.getPayload()) * 2);
    const [a, bad, b] = client('bp2').pubMany([['jsbatch:two', 1], ['taskhub:x', 2], ['jsbatch:two', 3, { priority: 1 }]]);
    assert.equal(await a.getResult(), 2);
    assert.equal(await b.getResult(), 6);
    await assert.rejects(bad.accepted(), (err) => err instanceof PermissionDenied && /item 1: /.test(err.message));
  });

  it('every item is checked before any is sent', async () => {
    const seen = [];
    await client('bw3').sub('jsbatch:none', async (task) => { seen.push(await task.getPayload()); });
    const p = client('bp3');
    assert.throws(() => p.pubMany([['jsbatch:none', 1], ['jsbatch none', 2]]),
      (err) => err instanceof InvalidAction && /^pubMany item 1 \('jsbatch none'\)/.test(err.message));
    assert.throws(() => p.pubMany([['jsbatch:none', 1, { colour: 'red' }]]),
      (err) => err instanceof InvalidOption && /pubMany item 0/.test(err.message));
    await p.pub('jsbatch:none', 'barrier').getResult(null); // after whatever went before it
    assert.deepEqual(seen, ['barrier']); // nothing of the refused lists was published
  });
});

describe('batched messages on the wire', { timeout: 20000 }, () => {
  // A hub of our own: what the client sends, and what it does with what it is sent.
  const fakeHub = async (onMessage, welcome = { max_batch: 1000 }) => {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((resolve) => wss.once('listening', resolve));
    wss.on('connection', (ws) => {
      ws.send(JSON.stringify({ op: 'welcome', protocol: 1, max_frame: 1 << 20, ...welcome }));
      ws.on('message', (data) => { for (const m of msgs(data)) onMessage(ws, m); });
    });
    return { url: `ws://127.0.0.1:${wss.address().port}`, close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }) };
  };

  for (const batching of [true, false]) {
    it(`a loop turn's pubs leave as ${batching ? 'one pubs' : 'single pubs to an older hub'}`, async () => {
      const got = [];
      const hub = await fakeHub((ws, m) => {
        if (m.op === 'pubs') {
          got.push(m);
          ws.send(JSON.stringify({ op: 'ok', ref: m.ref, items: m.items.map((it) => ({ task: `T${it.payload}`, state: 'init', created: true })) }));
        } else if (m.op === 'pub') {
          got.push(m);
          ws.send(JSON.stringify({ op: 'ok', ref: m.ref, task: `T${m.payload}` }));
        }
      }, batching ? { max_batch: 1000 } : {});
      const c = new Client(hub.url, { name: 'p', logger: quiet });
      try {
        const handles = Array.from({ length: 10 }, (_, i) => c.pub('a:b', i));
        assert.deepEqual(await Promise.all(handles.map((h) => h.accepted())), handles.map((_, i) => `T${i}`));
        if (batching) {
          assert.deepEqual(got.map((m) => m.op), ['pubs']);
          assert.ok(got[0].items.every((it) => !('op' in it) && !('ref' in it)));
        } else assert.deepEqual(got.map((m) => m.op), Array(10).fill('pub'));
      } finally {
        await c.close({ grace: 0 });
        await hub.close();
      }
    });
  }

  it('a worker runs each batched offer once and returns the results in one returns', async () => {
    const returned = [];
    let hello;
    let done;
    const all = new Promise((resolve) => { done = resolve; });
    const offer = { attempt: 1, action: 'a:b', group: 'w', publisher: 'p', created_at: 1 };
    const hub = await fakeHub((ws, m) => {
      if (m.op === 'hello') hello = m;
      else if (m.op === 'sub') {
        ws.send(JSON.stringify({ op: 'ok', ref: m.ref }));
        const items = Array.from({ length: 6 }, (_, i) => ({ ...offer, task: `T${i}`, payload: i }));
        ws.send(JSON.stringify([{ op: 'offers', items: items.slice(0, 4) }, { op: 'offer', ...items[4] }]));
        ws.send(JSON.stringify({ op: 'offers', items: items.slice(5) }));
      } else if (m.op === 'returns') returned.push(...m.items);
      else if (m.op === 'return') returned.push(m);
      if (returned.length >= 6) done();
    });
    const ran = [];
    const c = new Client(hub.url, { name: 'w', logger: quiet });
    try {
      await c.sub('a:b', async (task) => { ran.push(task.id); return (await task.getPayload()) * 10; }, { concurrency: 10 });
      await all;
      assert.equal(hello.batch, true);
      assert.deepEqual([...ran].sort(), ['T0', 'T1', 'T2', 'T3', 'T4', 'T5']);
      assert.deepEqual(returned.map((r) => [r.task, r.result]).sort(), [0, 1, 2, 3, 4, 5].map((i) => [`T${i}`, i * 10]));
    } finally {
      await c.close({ grace: 0 });
      await hub.close();
    }
  });
});
