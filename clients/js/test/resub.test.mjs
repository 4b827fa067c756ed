// A worker's subscription refused `partition_unavailable` (docs/workers.md, "When a partition has
// no leader"): sent again at a reconnect and refused past the resends, it is sent again every
// retry_after while the worker keeps it (it was dropped); and at most one `sub` of it is in flight
// at a time: neither a resend planned on a lost connection nor the send planned past the resends
// adds a second one beside the reconnect's own. A scripted hub (the protocol's answers) on loopback.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../index.mjs';
import { scriptedHub, quiet, sleep } from './scripted.mjs';

const HELD = 1000; // ms the scripted hub holds a reconnect's own sub unanswered
const refusal = (ref, retryAfter) => JSON.stringify({
  op: 'error', ref, code: 'partition_unavailable', message: 'partition 1 has no leader right now',
  details: { partition: 1, leader: '', retry_after: retryAfter },
});

/** The subs each connection got, and the most in flight at once on each. */
class Subs {
  constructor() { this.got = {}; this.open = {}; this.most = {}; }
  came(n) {
    this.got[n] = (this.got[n] || 0) + 1;
    this.open[n] = (this.open[n] || 0) + 1;
    this.most[n] = Math.max(this.most[n] || 0, this.open[n]);
  }
  done(n) { this.open[n] -= 1; }
}

function holdThenOk(ws, subs, n, ref, answered) {
  setTimeout(() => { subs.done(n); ws.send(JSON.stringify({ op: 'ok', ref })); answered(); }, HELD);
}

/**
 * A scripted hub that hands each `sub` to script(ws, n, m, subs, answered), and a worker client
 * on it; runs body(client, subs, taken) (taken: resolves once the script called answered()),
 * then closes both.
 */
async function withWorker(script, body) {
  const subs = new Subs();
  let answered;
  const taken = new Promise((r) => { answered = r; });
  const hub = await scriptedHub((ws, n, m) => {
    if (m.op !== 'sub') return;
    subs.came(n);
    script(ws, n, m, subs, answered);
  });
  const c = new Client(hub.url, { name: 'w', logger: quiet, maxBackoff: 50 });
  try {
    await body(c, subs, taken);
  } finally {
    await c.close({ grace: 0 });
    await hub.close();
  }
}

describe('a subscription refused partition_unavailable', { timeout: 30000 }, () => {
  it('is kept past the resends, and sent again until the hub takes it', () => withWorker((ws, n, m, subs, answered) => {
    subs.done(n);
    if (n === 1) {
      ws.send(JSON.stringify({ op: 'ok', ref: m.ref }));
      setTimeout(() => ws.close(1013), 50);
    } else if (subs.got[2] <= 8) ws.send(refusal(m.ref, 0.01)); // past the 5 resends, twice
    else { ws.send(JSON.stringify({ op: 'ok', ref: m.ref })); answered(); }
  }, async (c, subs, taken) => {
    await c.sub('job:run', () => null);
    await Promise.race([taken, sleep(5000)]);
    assert.deepEqual(subs.got, { 1: 1, 2: 9 });
  }));

  it('a resend planned on a lost connection does not double the reconnect\'s own sub', () => withWorker((ws, n, m, subs, answered) => {
    if (n === 1) {
      subs.done(n);
      ws.send(refusal(m.ref, 0.4)); // the client waits 400-600 ms
      setTimeout(() => ws.close(1013), 50);
    } else holdThenOk(ws, subs, n, m.ref, answered);
  }, async (c, subs, taken) => {
    const sub = c.sub('job:run', () => null);
    await taken;
    await sub; // confirmed by the reconnect's own send
    await sleep(700); // past the old resend's time
    assert.deepEqual(subs.got, { 1: 1, 2: 1 });
    assert.equal(subs.most[2], 1);
  }));

  it('a send planned past the resends does not double a reconnect\'s sub', () => withWorker((ws, n, m, subs, answered) => {
    if (n === 1) { // confirmed; then the hub sends the connection away
      subs.done(n);
      ws.send(JSON.stringify({ op: 'ok', ref: m.ref }));
      setTimeout(() => ws.close(1013), 50);
    } else if (n === 2) { // refused each time; the last refusal plans a send in 400 ms
      subs.done(n);
      const last = subs.got[2] === 6; // the reconnect's send and its 5 resends
      ws.send(refusal(m.ref, last ? 0.4 : 0.01));
      if (last) setTimeout(() => ws.close(1013), 50);
    } else holdThenOk(ws, subs, n, m.ref, answered);
  }, async (c, subs, taken) => {
    await c.sub('job:run', () => null);
    await taken;
    await sleep(500); // past the planned send's time
    assert.deepEqual(subs.got, { 1: 1, 2: 6, 3: 1 });
    assert.equal(subs.most[3], 1);
  }));
});
