// Seed 000 (atium.broker) in TaskHub terms, against `make serve` (ws://127.0.0.1:8080):
//   node examples/atium-worker.mjs
// - a worker with credit: it tells the hub it can run 4 tasks at once (`concurrency`), the
//   hub pushes at most that many, the library acks each and sends the result back;
// - chains: each workload is two steps of 'task:10001', the second starting when the first
//   succeeded, with the first one's output (`task.previousResult`);
// - events: the worker emits 'done' for every task to everyone except itself, and a separate
//   client that receives events (and no tasks) checks that it heard about every one.
import { Client } from 'taskhub';

const url = process.env.TASKHUB_URL || 'ws://127.0.0.1:8080';

class TestTask {
  constructor(name) {
    this.client = new Client(url, { name });
    this.client.sub('task:10001', (task) => this.run(task), { concurrency: 4 });
  }

  async run(task) {
    const input = await task.getPayload();
    console.log('t', task.id, input, 'after', task.previousResult);
    await this.client.emit('done', { n: input.stuff }); // everyone except me gets it
    return { stuff: input.stuff, doubled: input.stuff * 2 };
  }
}

// A client that receives events, no tasks.
const events = new Client(url, { name: 'observer' });
const store = {};
let heard;
const allHeard = new Promise((resolve) => { heard = resolve; });
await events.subscribe('done', (msg) => {
  store[msg.n] = false;
  if (Object.values(store).every((v) => v === false)) heard();
});
console.log('subscribe to "done"');

const worker = new TestTask('worker');
await worker.client.connect();

const chains = [];
for (let x = 0; x < 10; x++) {
  store[x] = true;
  store[x + 100] = true;
  chains.push(worker.client.chain([ // chain tasks
    ['task:10001', { stuff: x }], // run this task first
    ['task:10001', { stuff: x + 100 }], // run this task second
  ]));
}
const results = await Promise.all(chains.map((c) => c.getResult()));
console.log('last step results', results.map((r) => r.stuff).join(' '));
await allHeard; // no "dirty close" after a fixed wait: every event is accounted for
console.log('done task', JSON.stringify(store));
const missing = Object.keys(store).filter((k) => store[k]);
if (missing.length) console.log('missing', missing, 'did not receive event');

await worker.client.close();
await events.close();
