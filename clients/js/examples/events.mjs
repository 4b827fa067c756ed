// Broadcast events (seed 000's sub/unsub event system) against `make serve`:
//   node examples/events.mjs
// Events are not stored and not acked: every connection subscribed at the time gets one, except
// the sender. Topics use the action alphabet; `*` matches one segment, a trailing `>` the rest.
import { Client } from 'taskhub';

const url = process.env.TASKHUB_URL || 'ws://127.0.0.1:8080';
const shop = new Client(url, { name: 'shop' });
const billing = new Client(url, { name: 'billing' });
const audit = new Client(url, { name: 'audit' });

let got;
const received = new Promise((resolve) => { got = resolve; });
let count = 0;
await billing.subscribe('orders:*', (data, topic, from) => {
  console.log(`billing got ${topic} from ${from}:`, data);
  if (++count === 2) got();
});
await audit.subscribe('orders/>', (data, topic) => console.log(`audit got ${topic}:`, data));
await shop.subscribe('orders:*', () => console.log('never printed: the sender does not get its own event'));

console.log('receivers:', await shop.emit('orders:new', { id: 1, total: 42 })); // 1: billing
console.log('receivers:', await shop.emit('orders/eu:new', { id: 2 })); // 1: audit
console.log('receivers:', await shop.emit('orders:paid', { id: 1 })); // 1: billing
await received;

await billing.unsubscribe('orders:*');
console.log('receivers after unsubscribe:', await shop.emit('orders:new', { id: 3 })); // 0

await Promise.all([shop.close(), billing.close(), audit.close()]);
