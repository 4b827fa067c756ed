// A request answered `partition_unavailable` (the hub applied nothing: docs/workers.md, "When a
// partition has no leader") is sent again after the hub's retry_after, at most 5 times; a pub
// of a batched `pubs` alone. A scripted hub (the protocol's answers) on loopback.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocketServer } from 'ws';
import { Client, PartitionUnavailable } from '../index.mjs';

const quiet = { warn() {}, error() {} };
const msgs = (data) => { const m = JSON.parse(data.toString()); return Array.isArray(m) ? m : [m]; };
const unavailable = (ref, index) => ({
  op: 'error', ref, code: 'partition_unavailable',
  message: 'partition 1 has no leader right now (a hub is taking it over): try again',
  details: { partition: 1, leader: '', retry_after: 0.02, ...(index === undefined ? {} : { index }) },
});

async function fakeHub(onMessage) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.once('listening', resolve));
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ op: 'welcome', protocol: 1, max_frame: 1 << 20, max_batch: 1000 }));
    ws.on('message', (data) => { for (const m of msgs(data)) onMessage(ws, m); });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); wss.close(r); }),
  };
}

describe('partition_unavailable is sent again', { timeout: 30000 }, () => {
  it('a pub, a pub of a batch (alone) and a get, until the hub takes them', async () => {
    const seen = [];
    let refused = 0;
    const hub = await fakeHub((ws, m) => {
      seen.push(m.op);
      if (m.op === 'pubs') { // the second item's partition has no leader
        ws.send(JSON.stringify({ op: 'ok', ref: m.ref, items: [{ task: 'A' }, { error: unavailable(undefined, 1) }] }));
      } else if (m.op === 'pub' && refused < 1) {
        refused += 1;
        ws.send(JSON.stringify(unavailable(m.ref)));
      } else if (m.op === 'pub') ws.send(JSON.stringify({ op: 'ok', ref: m.ref, task: `T${m.payload}` }));
      else if (m.op === 'get' && seen.filter((op) => op === 'get').length === 1) ws.send(JSON.stringify(unavailable(m.ref)));
      else if (m.op === 'get') ws.send(JSON.stringify({ op: 'ok', ref: m.ref, task: { id: m.task, state: 'init' } }));
    });
    const c = new Client(hub.url, { name: 'p', logger: quiet });
    try {
      const [a, b] = [c.pub('a:b', 1), c.pub('a:b', 2)];
      assert.equal(await a.accepted(), 'A');
      assert.equal(await b.accepted(), 'T2'); // sent alone twice more, refused once more
      assert.deepEqual(seen.filter((op) => op.startsWith('pub')), ['pubs', 'pub', 'pub']);
      assert.equal((await c.get('T2')).state, 'init');
      assert.deepEqual(seen.filter((op) => op === 'get'), ['get', 'get']);
    } finally {
      await c.close({ grace: 0 });
      await hub.close();
    }
  });

  it('gives up after 5 tries with the hub\'s error', async () => {
    let pubs = 0;
    const hub = await fakeHub((ws, m) => {
      if (m.op === 'pub') { pubs += 1; ws.send(JSON.stringify(unavailable(m.ref))); }
    });
    const c = new Client(hub.url, { name: 'p', logger: quiet });
    try {
      await assert.rejects(c.pub('a:b', 1).accepted(), PartitionUnavailable);
      assert.equal(pubs, 6);
    } finally {
      await c.close({ grace: 0 });
      await hub.close();
    }
  });
});
