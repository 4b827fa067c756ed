// Seeds 001/004's client example, as written there, against `make serve` (ws://127.0.0.1:8080).
//   node examples/mailer.mjs
// One process plays both parts: the 'mailer' service works on 'mail:send-bulk', and a 'web'
// service publishes a task and follows its progress.
import { Client, TaskFailed } from 'taskhub';

const url = process.env.TASKHUB_URL || 'ws://127.0.0.1:8080';

const client = new Client(url, {
  name: 'mailer', // unique name
  key: process.env.TASKHUB_KEY || '---super-secret-key---', // any key: `make serve` has open access on loopback
});

await client.sub('mail:send-bulk', async (task) => {
  // Tell the hub this service works on this task, so that it knows to wait (the library does
  // it when the handler starts; calling it again is harmless).
  task.pickup();

  // Get payload (async because it could be large)
  const emails = await task.getPayload();

  // Update the caller on current progress
  for (let sent = 1; sent <= emails.length; sent++) {
    await new Promise((resolve) => setTimeout(resolve, 100)); // "sending"
    task.update({ sent, total: emails.length });
  }

  // Triggers when another service updates the task / returns a result first
  task.on('update', (data) => console.log('another service says', data));
  task.on('success', (result) => console.log('another service finished first with', result));

  // Done: the returned value is the result the publisher gets.
  // (task.drop() ends without a result; throwing fails the task.)
  return { sent: emails.length };
}, { concurrency: 4 });

const web = new Client(url, { name: 'web' });
const emails = ['ada@example.org', 'grace@example.org', 'linus@example.org'];

// Calling, with progress updates, waiting at most 30 min for the task to finish
const result = await web.pub('mail:send-bulk', emails, 1000 * 60 * 30 /* 30 min */)
  .on('update', (progress) => console.log('progress', progress))
  .getResult();
console.log('result', result);

// With a value if error, to avoid the exception: nobody serves 'mail:send-express', and the
// task may wait 1 s for a worker.
const fallback = await web.pub('mail:send-express', emails, { startTimeout: 1000 }).getResult('not sent');
console.log('express', fallback);

// A failure is an Error subclass
await client.sub('mail:send-broken', () => { throw new Error('SMTP server said 421'); });
try {
  await web.pub('mail:send-broken', emails).getResult();
} catch (err) {
  console.log(err instanceof TaskFailed, err.name, err.message);
}

await web.close();
await client.close();
