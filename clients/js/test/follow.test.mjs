// A publisher's handle around a reconnect: the `follow` sent on the new connection is answered
// with the task's view as the hub read it, which may be older than events the handle gets in the
// same frame, or got before. The answer is applied as it is read, and a handle never goes back
// to an older state (init < start < success | fail | end) nor hears 'start' twice. A scripted
// hub (a real one cannot be made to answer late on cue), as in the Python client's
// tests/integration/test_client_reconnect.py.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '../index.mjs';
import { scriptedHub, quiet, sleep } from './scripted.mjs';

const TASK = '01M98H3AAY01D30Z9DQQBMZ9XJ';
const event = (type) => ({ op: 'event', task: TASK, type, state: type, at: 1.0, ...(type === 'success' ? { data: 5 } : {}) });
const view = (state, extra = {}) => ({ id: TASK, action: 'job:run', state, result: null, error: null, updates: 0, ...extra });

/**
 * A task accepted on a connection that is then lost; on the next one the hub sends `before`
 * (frames, each an array of messages, after the follow arrived), then the follow's answer
 * (`answerView`) with `after` in the same frame. Resolves with the handle and the 'start'
 * listener's calls, once the handle reached `state` and a while more (and whether it was done
 * then: the close rejects what is left).
 */
async function followedAfterReconnect({ before = [], answerView, after = [], state }) {
  const hub = await scriptedHub((ws, n, m) => {
    if (m.op === 'pub') { // accepted, then the connection is lost
      ws.send(JSON.stringify({ op: 'ok', ref: m.ref, task: TASK, state: 'init', created: true }));
      setTimeout(() => ws.close(1013), 20);
    } else if (m.op === 'follow') {
      for (const frame of before) ws.send(JSON.stringify(frame));
      ws.send(JSON.stringify([{ op: 'ok', ref: m.ref, task: answerView }, ...after]));
    }
  });
  const c = new Client(hub.url, { name: 'p', logger: quiet, maxBackoff: 50 });
  try {
    const handle = c.pub('job:run', 4);
    let starts = 0;
    handle.on('start', () => { starts += 1; });
    await handle.accepted();
    const deadline = Date.now() + 5000;
    while (handle.state !== state && Date.now() < deadline) await sleep(5);
    await sleep(100); // several loop turns: what a late callback would undo
    return { handle, starts, done: handle.done }; // done before the close below
  } finally {
    await c.close({ grace: 0 });
    await hub.close();
  }
}

describe('a follow answered around a reconnect', { timeout: 30000 }, () => {
  it("its answer (init) comes before the frame's start event after it", async () => {
    const { handle, starts } = await followedAfterReconnect({ answerView: view('init'), after: [event('start')], state: 'start' });
    assert.equal(handle.state, 'start');
    assert.equal(handle.started, true);
    assert.equal(starts, 1);
  });

  it("its answer (init) comes before the frame's starts message after it", async () => {
    const { handle, starts } = await followedAfterReconnect({
      answerView: view('init'), after: [{ op: 'starts', tasks: [TASK] }], state: 'start' });
    assert.equal(handle.state, 'start');
    assert.equal(starts, 1);
  });

  it('an answer read before the start the handle already got does not take it back', async () => {
    const { handle, starts, done } = await followedAfterReconnect({ before: [[event('start')]], answerView: view('init'), state: 'start' });
    assert.equal(handle.state, 'start');
    assert.equal(handle.started, true);
    assert.equal(done, false);
    assert.equal(starts, 1);
  });

  it('a start event after an answer that saw the start is not a second start', async () => {
    const { handle, starts } = await followedAfterReconnect({
      answerView: view('start', { started_at: 1.0 }), after: [event('start')], state: 'start' });
    assert.equal(handle.state, 'start');
    assert.equal(starts, 1);
  });

  it("a late answer (init) does not undo the task's end", async () => {
    const { handle } = await followedAfterReconnect({
      answerView: view('init'), after: [event('start'), event('success')], state: 'success' });
    assert.equal(handle.state, 'success');
    assert.equal(await handle.getResult(), 5);
  });
});
