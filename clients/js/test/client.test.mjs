// The JS client against a real hub (open access on loopback, SQLite store): the seeds' API.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  Client, TaskFailed, TaskTimeout, TaskCancelled, NoResult, ConnectionClosed, InvalidAction,
  InvalidOption, NotHolding,
} from '../index.mjs';
import { Hub } from './hub.mjs';
import { recordingProxy } from './proxy.mjs';

const quiet = { warn() {}, error() {} };

describe('against a hub', { timeout: 60000 }, () => {
  let hub;
  const clients = [];
  const client = (name, opts = {}) => {
    const c = new Client(hub.url, { name, logger: quiet, ...opts });
    clients.push(c);
    return c;
  };

  before(async () => { hub = await new Hub().start(); });
  after(async () => {
    await Promise.all(clients.map((c) => c.close({ grace: 0 })));
    await hub.destroy();
  });

  it('round trip: the seeds\' worker and publisher', async () => {
    const worker = client('mailer');
    await worker.sub('mail:send-bulk', async (task) => {
      task.pickup();
      const emails = await task.getPayload();
      return { sent: emails.length, publisher: task.publisher };
    });
    const web = client('web');
    const result = await web.pub('mail:send-bulk', ['a@x.org', 'b@x.org'], 30 * 60 * 1000).getResult();
    assert.deepEqual(result, { sent: 2, publisher: 'web' });
  });

  it('says hello, so the dashboard shows a Node worker\'s host, pid and version', async () => {
    const worker = client('hello-worker');
    await worker.sub('hello:job', async () => null);
    const res = await fetch(`${hub.httpUrl}/v1/dashboard/connections`);
    assert.equal(res.status, 200);
    const mine = (await res.json()).filter((c) => c.client === 'taskhub-js' && c.pid === process.pid);
    assert.ok(mine.length >= 1, 'the worker\'s connection carries its hello');
    assert.equal(mine[0].version, JSON.parse(readFileSync(new URL('../package.json', import.meta.url))).version);
  });

  it('the start of a followed task comes in a starts message (hello starts: true)', async () => {
    // Through a recording proxy: what the hub sent the publisher. Every handle starts once,
    // from the starts messages; the hub sends no start event to this client.
    const proxy = await recordingProxy(hub.url);
    const pub = new Client(proxy.url, { name: 'starts-pub', logger: quiet });
    try {
      let release;
      const hold = new Promise((resolve) => { release = resolve; });
      await client('starts-worker').sub('starts:job', async (task) => { await hold; return task.getPayload(); }, { concurrency: 20 });
      const handles = pub.pubMany(Array.from({ length: 20 }, (_, i) => ['starts:job', i]));
      const heard = handles.map(() => 0);
      await Promise.all(handles.map((h, i) => new Promise((resolve) => h.on('start', () => { heard[i] += 1; resolve(); }))));
      assert.deepEqual(handles.map((h) => [h.state, h.started]), handles.map(() => ['start', true]));
      release();
      assert.deepEqual(await Promise.all(handles.map((h) => h.getResult())), handles.map((_, i) => i));
      assert.deepEqual(heard, handles.map(() => 1));
      const named = new Set(proxy.fromHub.filter((m) => m.op === 'starts').flatMap((m) => m.tasks));
      assert.deepEqual(handles.filter((h) => !named.has(h.id)).map((h) => h.id), []);
      assert.deepEqual(proxy.fromHub.filter((m) => m.op === 'event' && m.type === 'start'), []);
    } finally {
      await pub.close({ grace: 0 });
      await proxy.close();
    }
  });

  it('says once per action when nobody subscribes (pooled)', async () => {
    const warnings = [];
    const web = client('pooler', { logger: { warn: (m) => warnings.push(m), error() {} } });
    const first = web.pub('nobody/here:listens', 1);
    const second = web.pub('nobody/here:listens', 2);
    await first.accepted();
    await second.accepted();
    assert.equal(first.pooled, true);
    assert.equal(second.pooled, true);
    assert.equal(warnings.filter((m) => m.includes("'nobody/here:listens'")).length, 1);
    const worker = client('listener');
    await worker.sub('some:job', async () => 'ok');
    const served = web.pub('some:job', null);
    assert.equal(await served.getResult(), 'ok');
    assert.equal(served.pooled, false);
    await first.cancel();
    await second.cancel();
  });

  it('calls made before the connection is up wait for it (the seeds never await a connect)', async () => {
    const c = client('eager');
    c.sub('eager:work', (task) => task.getPayload().then((p) => p + 1));
    assert.equal(await c.pub('eager:work', 41).getResult(), 42);
  });

  it('progress updates reach the publisher, and a late listener hears the latest at once', async () => {
    const worker = client('progress');
    await worker.sub('report:build', async (task) => {
      await task.update({ done: 1, total: 2 });
      await task.update({ done: 2, total: 2 });
      return 'built';
    });
    const seen = [];
    const handle = client('asker').pub('report:build', null).on('update', (data) => seen.push(data));
    assert.equal(await handle.getResult(), 'built');
    assert.deepEqual(seen, [{ done: 1, total: 2 }, { done: 2, total: 2 }]);
    const late = [];
    handle.on('update', (data, h) => late.push([data, h.getLastUpdate()]));
    handle.on('success', (result) => late.push(result));
    assert.deepEqual(late, [[{ done: 2, total: 2 }, { done: 2, total: 2 }], 'built']);
  });

  it('the first return wins; the other holder hears success and its return is ignored', async () => {
    const fast = client('fast');
    const slow = client('slow');
    let slowHeard;
    const slowDone = new Promise((resolve) => { slowHeard = resolve; });
    await fast.sub('geo:geocode', () => 'fast');
    await slow.sub('geo:geocode', (task) => new Promise((resolve) => {
      task.on('success', (result) => { slowHeard(result); resolve('slow'); });
    }));
    const result = await client('p1').pub('geo:geocode', 'Oslo').getResult();
    assert.equal(result, 'fast');
    assert.equal(await slowDone, 'fast');
  });

  it('drop: every delivery dropped ends the task without a result', async () => {
    const worker = client('dropper');
    await worker.sub('log:maybe', async (task) => { await task.drop(); return 'ignored'; });
    const pub = client('p2');
    await assert.rejects(pub.pub('log:maybe', 1).getResult(), NoResult);
    assert.equal(await pub.pub('log:maybe', 2).getResult('fallback'), 'fallback');
  });

  it('a handler that throws fails the task with its error type and message', async () => {
    const worker = client('thrower');
    class SMTPError extends Error { constructor(m) { super(m); this.name = 'SMTPError'; } }
    await worker.sub('mail:fail', () => { throw new SMTPError('421 try later'); });
    const err = await client('p3').pub('mail:fail', {}).getResult().catch((e) => e);
    assert.ok(err instanceof TaskFailed && err instanceof Error);
    assert.equal(err.errorType, 'SMTPError');
    assert.match(err.message, /SMTPError: 421 try later/);
  });

  it('timeouts: no worker in time gives getResult(default); a hung handler is revoked', async () => {
    const pub = client('p4');
    assert.equal(await pub.pub('nobody:home', null, { startTimeout: 200 }).getResult('default'), 'default');
    const never = pub.pub('nobody:home', null, { startTimeout: 100 });
    const err = await never.getResult().catch((e) => e);
    assert.ok(err instanceof TaskTimeout);
    assert.equal(err.reason, 'start_timeout');
    const late = [];
    never.on('start', () => late.push('start')).on('fail', (error) => late.push(error.reason));
    assert.deepEqual(late, ['start_timeout']); // told at once; it never started

    const worker = client('hung');
    let revoked;
    const gotRevoke = new Promise((resolve) => { revoked = resolve; });
    await worker.sub('slow:work', (task) => new Promise((resolve) => {
      task.signal.addEventListener('abort', () => { revoked(task.revoked); resolve('too late'); });
    }));
    const err2 = await pub.pub('slow:work', null, 300).getResult().catch((e) => e);
    assert.ok(err2 instanceof TaskTimeout);
    assert.equal(err2.reason, 'timeout');
    assert.equal(await gotRevoke, 'timeout');
  });

  it('cancel: the publisher cancels, the worker is told', async () => {
    const worker = client('cancelled-worker');
    let started;
    const running = new Promise((resolve) => { started = resolve; });
    const revoke = new Promise((resolve) => {
      worker.sub('video:encode', (task) => new Promise(() => {
        task.on('revoke', resolve);
        started();
      }));
    });
    const handle = client('p5').pub('video:encode', 'movie.mp4');
    await running;
    await handle.cancel();
    await assert.rejects(handle.getResult(), TaskCancelled);
    assert.equal(await revoke, 'cancelled');
  });

  it('concurrency: the credit lets that many handlers run at once', async () => {
    const worker = client('parallel');
    let running = 0;
    let most = 0;
    let release;
    const both = new Promise((resolve) => { release = resolve; });
    await worker.sub('img:resize', async (task) => {
      running += 1;
      most = Math.max(most, running);
      if (running === 2) release();
      await both; // with a credit of 1 this would never be reached by a second handler
      running -= 1;
      return task.id;
    }, { concurrency: 2 });
    const pub = client('p6');
    const ids = await Promise.all([1, 2, 3, 4].map((i) => pub.pub('img:resize', i).getResult()));
    assert.equal(new Set(ids).size, 4);
    assert.equal(most, 2);
  });

  it('groups and observers: each group gets its copy, an observer sees without holding up', async () => {
    const a = client('billing');
    const b = client('audit-worker');
    const obs = client('audit');
    const seen = [];
    await a.sub('order:placed', () => 'billed');
    await b.sub('order:placed', async (task) => { await task.drop(); }, { group: 'audit-queue' });
    await obs.sub('order:placed', (task) => { seen.push(task.observe); }, { observe: true });
    assert.equal(await client('shop').pub('order:placed', { id: 7 }).getResult(), 'billed');
    assert.deepEqual(seen, [true]);
  });

  it('durable: tasks wait in a durable group\'s queue while no worker is connected', async () => {
    const first = client('store-worker');
    await first.sub('stock:count', () => 'unused', { durable: true, group: 'stock' });
    await first.close();
    const handle = client('p7').pub('stock:count', 3);
    await handle.accepted();
    const queues = await client('ops').queues();
    const q = queues.find((x) => x.action === 'stock:count' && x.group === 'stock');
    assert.equal(q.durable, true);
    assert.equal(q.waiting, 1);
    const second = client('store-worker');
    await second.sub('stock:count', async (task) => (await task.getPayload()) * 2, { durable: true, group: 'stock' });
    assert.equal(await handle.getResult(), 6);
  });

  it('broadcast events are not echoed to the sender', async () => {
    const a = client('shop-a');
    const b = client('shop-b');
    const gotA = [];
    const gotB = [];
    let bDone;
    const bHeard = new Promise((resolve) => { bDone = resolve; });
    let aDone;
    const aHeard = new Promise((resolve) => { aDone = resolve; });
    await a.subscribe('orders:*', (data, topic) => { gotA.push([topic, data]); aDone(); });
    await b.subscribe('orders:*', (data, topic, from) => { gotB.push([topic, data, from]); bDone(); });
    assert.equal(await a.emit('orders:new', { id: 1 }), 1);
    await bHeard;
    // b answers; a's own event, had the hub sent it back, would be queued ahead of this one.
    await b.emit('orders:done', { id: 1 });
    await aHeard;
    assert.deepEqual(gotA, [['orders:done', { id: 1 }]]);
    assert.deepEqual(gotB, [['orders:new', { id: 1 }, 'shop-a']]);
    await b.unsubscribe('orders:*');
    assert.equal(await a.emit('orders:new', { id: 2 }), 0);
  });

  it('a chain passes each result on; a group returns the list', async () => {
    const w = client('chain-worker');
    await w.sub('geo:lookup', async (task) => ({ lat: 59.9, city: await task.getPayload() }));
    await w.sub('weather:forecast', async (task) => {
      const at = await task.getPayload();
      assert.deepEqual(task.previousResult, at);
      return `sunny at ${at.lat}`;
    });
    const pub = client('p8');
    assert.equal(await pub.chain([['geo:lookup', 'Oslo'], ['weather:forecast', null]]).getResult(), 'sunny at 59.9');
    const steps = [{ action: 'geo:lookup', payload: 'A' }, { action: 'geo:lookup', payload: 'B' }];
    assert.deepEqual(await pub.group(steps).getResult(), [{ lat: 59.9, city: 'A' }, { lat: 59.9, city: 'B' }]);
  });

  it('watch streams the task events of matching actions', async () => {
    const w = client('watched-worker');
    await w.sub('wx:run', () => 'ok');
    const watcher = client('watcher');
    const watch = await watcher.watch('wx:*').started();
    const handle = client('p9').pub('wx:run', 1);
    const id = await handle.accepted();
    const types = [];
    for await (const event of watch) {
      assert.equal(event.task, id);
      types.push(event.type);
      if (event.type === 'end' || event.type === 'success') break;
    }
    assert.deepEqual(types.slice(0, 1), ['init']);
    assert.ok(types.includes('success'));
  });

  it('a repeated key returns the same task', async () => {
    const pub = client('p10');
    const h1 = pub.pub('nobody:keyed', 1, { key: 'k-1', startTimeout: null });
    const h2 = pub.pub('nobody:keyed', 2, { key: 'k-1' });
    assert.equal(await h1.accepted(), await h2.accepted());
    await h1.cancel();
    await assert.rejects(h2.getResult(), TaskCancelled);
  });

  it('delay takes an interval such as \'7 days\': the task waits', async () => {
    const pub = client('p11');
    const id = await pub.pub('later:run', null, { delay: '7 days', priority: 3 }).accepted();
    const view = await pub.get(id);
    assert.equal(view.state, 'init');
    assert.equal(view.options.priority, 3);
    await pub.cancel(id);
  });

  it('bad input is refused at once with an error naming it', () => {
    const c = client('bad');
    assert.throws(() => c.pub('email send', 1), (e) => e instanceof InvalidAction && /has no ':verb'/.test(e.message));
    assert.throws(() => c.pub('a:b', 1, { delay: '3 months' }), (e) => e instanceof InvalidOption && /months/.test(e.message));
    assert.throws(() => c.pub('a:b', 1, { tiemout: 5 }), (e) => e instanceof InvalidOption && /tiemout/.test(e.message));
    assert.throws(() => c.sub('a:b', () => {}, { concurrency: 0 }), InvalidOption);
    assert.throws(() => c.watch('a:*x'), InvalidAction);
  });

  it('values JSON cannot carry are refused where they are sent, naming the path', async () => {
    const c = client('plain');
    assert.throws(() => c.pub('a:b', { at: new Date(0) }),
      (e) => e instanceof TypeError && /payload\.at is a Date.*toISOString/.test(e.message));
    assert.throws(() => c.pub('a:b', { n: [1, NaN] }), (e) => e instanceof TypeError && /payload\.n\[1\] is NaN/.test(e.message));
    await assert.rejects(c.emit('orders:new', new Map()), (e) => e instanceof TypeError && /data is a Map/.test(e.message));
    const w = client('plain-worker');
    let updateErr;
    const refused = new Promise((resolve) => { updateErr = resolve; });
    await w.sub('plain:work', async (task) => {
      updateErr(await task.update({ big: 10n }).catch((e) => e));
      return { when: new Date(0) };
    });
    const err = await c.pub('plain:work', null, { retries: 3 }).getResult().catch((e) => e);
    assert.ok(err instanceof TaskFailed);
    assert.equal(err.errorType, 'TypeError');
    assert.match(err.message, /its result could not be sent: .*result\.when is a Date/);
    assert.match((await refused).message, /data\.big is a bigint/);
  });

  it('task.success() sends at once; a second call is refused', async () => {
    const w = client('explicit');
    let second;
    const refused = new Promise((resolve) => { second = resolve; });
    await w.sub('pay:charge', async (task) => {
      await task.success({ charged: true });
      second(await task.success('again').catch((e) => e));
      return 'ignored';
    });
    assert.deepEqual(await client('p12').pub('pay:charge', 1).getResult(), { charged: true });
    assert.ok((await refused) instanceof NotHolding);
  });

  it('after close(), everything pending rejects with ConnectionClosed', async () => {
    const c = new Client(hub.url, { name: 'closer', logger: quiet });
    const handle = c.pub('nobody:ever', 1);
    await handle.accepted();
    const pending = handle.getResult();
    await c.close();
    await assert.rejects(pending, ConnectionClosed);
    await assert.rejects(c.pub('nobody:ever', 2).getResult(), ConnectionClosed);
  });

  it('close() past its grace hands a running task back without counting a try', async () => {
    const w = new Client(hub.url, { name: 'handback1', logger: quiet });
    let started;
    const running = new Promise((resolve) => { started = resolve; });
    await w.sub('handback:job', () => { started(); return new Promise(() => {}); });
    // One try only: had the close counted one, the task would fail instead of running again.
    const handle = client('p14').pub('handback:job', 1, { maxAttempts: 1 });
    await running;
    await w.close({ grace: 50 });
    await client('handback1').sub('handback:job', () => 'ran elsewhere'); // its group: the name
    assert.equal(await handle.getResult(), 'ran elsewhere');
  });

  it('close() lets a running handler finish and send its result', async () => {
    const w = new Client(hub.url, { name: 'graceful', logger: quiet });
    let started;
    const running = new Promise((resolve) => { started = resolve; });
    let finish;
    await w.sub('grace:job', () => { started(); return new Promise((resolve) => { finish = resolve; }); });
    const handle = client('p13').pub('grace:job', 1);
    await running;
    const closing = w.close({ grace: 30000 });
    finish('finished');
    await closing;
    assert.equal(await handle.getResult(), 'finished');
  });
});
