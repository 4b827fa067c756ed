// Reconnect: the hub restarts on the same port with the same SQLite store; clients come back,
// subscribe again and catch up with the tasks they wait on.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../index.mjs';
import { Hub } from './hub.mjs';

const quiet = { warn() {}, error() {} };

function nextConnect(client) {
  return new Promise((resolve) => client.once('connect', resolve));
}

describe('reconnect after the hub restarts', { timeout: 90000 }, () => {
  let hub;
  const clients = [];
  const client = (name) => {
    const c = new Client(hub.url, { name, logger: quiet, maxBackoff: 200 });
    clients.push(c);
    return c;
  };

  before(async () => { hub = await new Hub().start(); });
  after(async () => {
    await Promise.all(clients.map((c) => c.close({ grace: 0 })));
    await hub.destroy();
  });

  it('re-subscribes, and a task published before the restart still gets its result', async () => {
    const worker = client('resizer');
    await worker.sub('img:resize', async (task) => `resized ${await task.getPayload()}`);
    const pub = client('web');
    assert.equal(await pub.pub('img:resize', 'a.png').getResult(), 'resized a.png');

    // Published while no worker serves it: stored, pooled, and waited on across the restart.
    const pending = pub.pub('img:crop', 'b.png');
    await pending.accepted();
    const updates = [];
    pending.on('update', (data) => updates.push(data));

    const disconnected = new Promise((resolve) => pub.once('disconnect', resolve));
    await hub.stop();
    await disconnected;
    const back = [nextConnect(worker), nextConnect(pub)];
    // Published while the hub is down: queued, and sent with the new connection.
    const queued = pub.pub('img:resize', 'd.png');
    await hub.start();
    await Promise.all(back);
    assert.equal(await queued.getResult(), 'resized d.png');

    // The worker's subscription was restored: a new task reaches it.
    assert.equal(await pub.pub('img:resize', 'c.png').getResult(), 'resized c.png');
    // The handle published before the restart follows its task again and gets the result.
    const cropper = client('cropper');
    await cropper.sub('img:crop', async (task) => {
      await task.update('half way');
      return `cropped ${await task.getPayload()}`;
    });
    assert.equal(await pending.getResult(), 'cropped b.png');
    assert.deepEqual(updates, ['half way']);
  });

  it('events and watches are restored too', async () => {
    const listener = client('listener');
    const heard = [];
    let got;
    const one = new Promise((resolve) => { got = resolve; });
    await listener.subscribe('news:*', (data) => { heard.push(data); got(); });
    const talker = client('talker');
    await talker.connect();
    const back = [nextConnect(listener), nextConnect(talker)];
    await hub.stop();
    await hub.start();
    await Promise.all(back);
    assert.equal(await talker.emit('news:today', 'after restart'), 1);
    await one;
    assert.deepEqual(heard, ['after restart']);
  });
});
