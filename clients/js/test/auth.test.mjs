// Credentials and permissions: a hub with a config file of credentials.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client, AuthenticationFailed, PermissionDenied, TooManyConnections } from '../index.mjs';
import { Hub } from './hub.mjs';

const quiet = { warn() {}, error() {} };
const CONFIG = `
[[credentials]]
name = "mailer"
key = "mailer-secret"
sub_permissions = ["mail/bulk:send"]
pub_permissions = ["log"]
max_connections = 1

[[credentials]]
name = "web"
key = "web-secret"
sub_permissions = []
pub_permissions = ["mail"]
`;

describe('credentials', { timeout: 60000 }, () => {
  let hub;
  const clients = [];
  const client = (name, key) => {
    const c = new Client(hub.url, { name, key, logger: quiet });
    clients.push(c);
    return c;
  };

  before(async () => { hub = await new Hub({ config: CONFIG }).start(); });
  after(async () => {
    await Promise.all(clients.map((c) => c.close({ grace: 0 })));
    await hub.destroy();
  });

  it('the right key works end to end', async () => {
    const mailer = client('mailer', 'mailer-secret');
    await mailer.sub('mail/bulk:send', async (task) => ({ sent: (await task.getPayload()).length }));
    const web = client('web', 'web-secret');
    assert.deepEqual(await web.pub('mail/bulk:send', ['a', 'b']).getResult(), { sent: 2 });
  });

  it("seed 004's constructor form: new Client({url, clientName, key})", async () => {
    const c = new Client({ url: hub.url, clientName: 'web', key: 'web-secret', logger: quiet });
    clients.push(c);
    await c.connect();
    assert.equal(c.welcome.service, 'web');
  });

  it('a wrong key is refused at connect, and what was queued rejects with it', async () => {
    const bad = client('web', 'wrong');
    const handle = bad.pub('mail/bulk:send', []);
    await assert.rejects(bad.connect(), (e) => e instanceof AuthenticationFailed && /web/.test(e.message));
    await assert.rejects(handle.getResult(), AuthenticationFailed);
  });

  it('max_connections refuses the next connection', async () => {
    const second = client('mailer', 'mailer-secret');
    await assert.rejects(second.connect(), TooManyConnections);
  });

  it('a refused permission names the action', async () => {
    const web = client('web', 'web-secret');
    const err = await web.pub('geo:geocode', 'Oslo').getResult().catch((e) => e);
    assert.ok(err instanceof PermissionDenied);
    assert.equal(err.details.action, 'geo:geocode');
    assert.equal(await web.pub('geo:geocode', 'Oslo').getResult('no'), 'no');
    await assert.rejects(async () => { await web.sub('mail/bulk:send', () => 1); }, PermissionDenied);
    await assert.rejects(web.subscribe('orders:*', () => {}), PermissionDenied);
  });
});
