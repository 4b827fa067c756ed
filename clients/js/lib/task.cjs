'use strict';
// What a handler gets (Task) and what a publisher holds (Handle), as in the seeds' API:
//   task.pickup(); await task.getPayload(); task.update(x); task.on('update' | 'success', cb)
//   client.pub(action, payload).on('update', cb).getResult(valueIfError)
// A listener added late is called at once for what already happened (the latest update, the
// final event), so `.on()` after the fact does not miss it.
const {
  ConnectionClosed, NoResult, NotHolding, TaskCancelled, TaskFailed, TaskTimeout, fromWire,
} = require('./errors.cjs');

const FINAL = new Set(['success', 'fail', 'end']);
const MISSING = Symbol('missing');
// A task's states only move forward (docs/lifecycle.md): init, start, then one final state.
const RANK = { init: 0, start: 1, success: 2, fail: 2, end: 2 };

/** Whether `state` is older than `than` (an unknown state is taken as it comes). */
function older(state, than) {
  return RANK[state] !== undefined && RANK[than] !== undefined && RANK[state] < RANK[than];
}

class Listeners {
  constructor(owner, log) {
    this.owner = owner;
    this.log = log;
    this.map = null; // made on first use: most handles never get a listener
  }

  add(event, cb) {
    if (typeof cb !== 'function') throw new TypeError(`on('${event}', cb): cb must be a function`);
    if (this.map === null) this.map = new Map();
    if (!this.map.has(event)) this.map.set(event, []);
    this.map.get(event).push(cb);
  }

  remove(event, cb) {
    const list = this.map && this.map.get(event);
    if (list) {
      const i = list.indexOf(cb);
      if (i >= 0) list.splice(i, 1);
    }
  }

  emit(event, data) {
    const list = this.map && this.map.get(event);
    if (!list) return;
    for (const cb of [...list]) this.call(cb, event, data);
  }

  call(cb, event, data) {
    try {
      const out = cb(data, this.owner);
      if (out && typeof out.then === 'function') {
        out.then(undefined, (err) => this.log.error(`taskhub: a '${event}' listener failed: ${err && err.stack ? err.stack : err}`));
      }
    } catch (err) {
      this.log.error(`taskhub: a '${event}' listener threw: ${err && err.stack ? err.stack : err}`);
    }
  }
}

/** Marks a promise as handled (a step a handler did not await must not crash Node) and logs. */
function quiet(promise, log, what) {
  promise.catch((err) => log.warn(`taskhub: ${what} failed: ${err.message}`));
  return promise;
}

/** One delivery of a task to this worker (or a copy for an observer). */
class Task {
  constructor(client, offer) {
    this._client = client;
    this.id = offer.task;
    this.action = offer.action;
    this.attempt = offer.attempt;
    this.group = offer.group;
    this.publisher = offer.publisher;
    this.createdAt = offer.created_at;
    this.observe = Boolean(offer.observe);
    this.previousResult = offer.previous_result === undefined ? null : offer.previous_result;
    this.lastUpdate = null;
    this.updates = 0; // updates seen from other services
    this.revoked = null; // why the hub took the task away, if it did
    this.succeeded = false; // another service returned a result
    this.ended = null; // 'success' | 'fail' | 'end' once a final event arrived
    this.dropped = false;
    this.returned = false;
    this.pickedUp = false;
    this._hasPayload = 'payload' in offer;
    this._payload = offer.payload === undefined ? null : offer.payload;
    this._abort = null; // made when `signal` is first read: most handlers never look
    this._listeners = new Listeners(this, client._log);
  }

  /** Aborted when the hub revokes the delivery (timeout, cancel) or the client closes. */
  get signal() {
    if (this._abort === null) {
      this._abort = new AbortController();
      if (this.revoked) this._abort.abort(new Error(`task ${this.id} was revoked: ${this.revoked}`));
    }
    return this._abort.signal;
  }

  /** "I am working on it, wait for me" (idempotent; the library does it when the handler starts). */
  pickup() {
    if (this.pickedUp || this.observe) return Promise.resolve();
    this.pickedUp = true;
    return this._step('pickup');
  }

  start() { return this.pickup(); }

  /** The payload; a large one (over 64 KiB) is fetched from the hub on first use. */
  getPayload() {
    if (this._hasPayload) return Promise.resolve(this._payload);
    return this._client._conn.request({ op: 'payload', task: this.id }).then((reply) => {
      this._payload = reply.payload === undefined ? null : reply.payload;
      this._hasPayload = true;
      return this._payload;
    });
  }

  /** Progress, relayed to the publisher and to the other services holding the task. */
  update(data) {
    return this._step('update', { data: data === undefined ? null : data });
  }

  /** Done with `result`, sent at once; the handler's return value is then ignored. */
  success(result) {
    if (this.returned || this.dropped) {
      const done = this.returned ? 'success() was already called' : 'it was dropped';
      return Promise.reject(new NotHolding(
        `task ${this.id} (${this.action}): ${done} for this delivery (attempt ${this.attempt}); success() sends nothing more`,
        { task: this.id }));
    }
    if (!this.observe) this.returned = true;
    try {
      return this._step('return', { result: result === undefined ? null : result });
    } catch (err) {
      this.returned = false; // not sent: the handler's error goes to the hub as a fail
      return Promise.reject(err);
    }
  }

  /** Done without a result; the handler's return value is then ignored. */
  drop() {
    if (this.returned) {
      return Promise.reject(new NotHolding(
        `task ${this.id} (${this.action}): success() was already called for this delivery (attempt ${this.attempt}); drop() sends nothing more`,
        { task: this.id }));
    }
    this.dropped = true;
    if (this.observe) return Promise.resolve();
    return this._step('drop');
  }

  getLastUpdate() { return this.lastUpdate; }

  /** Listen: 'update' (data), 'success' (result), 'fail' (error), 'end', 'revoke' (reason). */
  on(event, cb) {
    this._listeners.add(event, cb);
    // Late listener: what already happened is told at once.
    if (event === 'update' && this.updates > 0) this._listeners.call(cb, event, this.lastUpdate);
    else if (event === this.ended) this._listeners.call(cb, event, this._final);
    else if (event === 'revoke' && this.revoked) this._listeners.call(cb, event, this.revoked);
    return this;
  }

  off(event, cb) { this._listeners.remove(event, cb); return this; }

  _step(op, fields) {
    const attempt = this.observe ? 0 : this.attempt;
    const msg = { op, task: this.id, attempt, ...fields };
    let promise;
    try {
      promise = this._client._conn.request(msg);
    } catch (err) {
      if (op === 'return') throw err; // unsendable result: success() turns it into a fail
      promise = Promise.reject(err);
    }
    return quiet(promise, this._client._log, `${op} of task ${this.id} (${this.action})`);
  }

  _event(msg) {
    const kind = msg.type;
    const data = msg.data === undefined ? null : msg.data;
    if (kind === 'update') {
      this.lastUpdate = data;
      this.updates += 1;
      this._listeners.emit('update', data);
    } else if (FINAL.has(kind) && !this.ended) {
      if (kind === 'success') this.succeeded = true;
      this.ended = kind;
      this._final = data;
      this._listeners.emit(kind, data);
    }
  }

  _revoke(reason) {
    if (this.revoked) return;
    this.revoked = reason;
    if (this._abort !== null) this._abort.abort(new Error(`task ${this.id} was revoked: ${reason}`));
    this._listeners.emit('revoke', reason);
  }
}

/** A published task: its id once accepted, its events, and its result. */
class Handle {
  constructor(client, action) {
    this._client = client;
    this.action = action;
    this.id = null;
    this.state = 'init';
    this.lastUpdate = null;
    this.updates = 0;
    this.started = false; // a worker started it (a 'start' event, or the view's started_at)
    this.pooled = false; // no worker subscribed to the action when the hub stored it
    this.result = null;
    this.error = null; // {reason, message, type?} once failed
    this._refused = null; // the hub refused it, or its answer was lost
    this._ended = false;
    this._acceptWaiters = [];
    this._endWaiters = [];
    this._listeners = new Listeners(this, client._log);
  }

  get done() { return this._ended || this._refused !== null; }

  /** Listen: 'start', 'update' (data), 'retry', 'drop', 'step', 'success' (result), 'fail' (error), 'end'. Chainable. */
  on(event, cb) {
    this._listeners.add(event, cb);
    if (event === 'update' && this.updates > 0) this._listeners.call(cb, event, this.lastUpdate);
    else if (event === 'start' && this.started) this._listeners.call(cb, event, null);
    else if (this._ended && event === this.state) {
      this._listeners.call(cb, event, this.state === 'success' ? this.result : this.state === 'fail' ? this.error : null);
    }
    return this;
  }

  off(event, cb) { this._listeners.remove(event, cb); return this; }

  getLastUpdate() { return this.lastUpdate; }

  /** The task id, once the hub has stored the task. */
  accepted() {
    if (this.id !== null) return Promise.resolve(this.id);
    if (this._refused) return Promise.reject(this._refused);
    return new Promise((resolve, reject) => this._acceptWaiters.push({ resolve, reject }));
  }

  /**
   * The result. Rejects with TaskFailed, TaskTimeout, TaskCancelled, NoResult, ConnectionClosed
   * or the hub's refusal (PermissionDenied, ...) - or, given `valueIfError`, resolves to it instead.
   */
  getResult(valueIfError = MISSING) {
    const wait = this.done
      ? new Promise((resolve, reject) => this._settle(resolve, reject))
      : new Promise((resolve, reject) => this._endWaiters.push({ resolve, reject }));
    return valueIfError === MISSING ? wait : wait.catch(() => valueIfError);
  }

  /** The error getResult() rejects with, once the task failed or ended without a result. */
  exception() {
    if (this._refused) return this._refused;
    if (this.state === 'end') return new NoResult(`task ${this.id} (${this.action}) ended without a result`);
    const err = this.error || {};
    const reason = String(err.reason || 'error');
    const message = String(err.message || '') || reason;
    let cls = TaskFailed;
    if (reason === 'timeout' || reason === 'start_timeout') cls = TaskTimeout;
    else if (reason === 'cancelled') cls = TaskCancelled;
    const type = String(err.type || '');
    return new cls(`task ${this.id} (${this.action}) failed: ${type ? `${type}: ${message}` : message}`,
      { reason, errorType: type, taskId: this.id || '' });
  }

  /** Cancel the task (it fails with reason `cancelled`; workers are told). */
  cancel() {
    const p = this.accepted().then((id) => this._client._conn.request({ op: 'cancel', task: id })).then(() => undefined);
    return quiet(p, this._client._log, `cancelling a ${this.action} task`);
  }

  _settle(resolve, reject) {
    if (this._refused) reject(this._refused);
    else if (this.state === 'success') resolve(this.result);
    else reject(this.exception());
  }

  // --- fed by the client and its connection ------------------------------------------------------
  _answer(reply) {
    if (reply.op !== 'ok') {
      this._refuse(fromWire(reply));
      return;
    }
    this._client._track(reply.task, this);
    this.id = reply.task;
    if (reply.pooled) {
      this.pooled = true;
      this._client._nobodySubscribed(this.action, this.id);
    }
    for (const w of this._acceptWaiters.splice(0)) w.resolve(this.id);
    if (reply.created === false) this._client._follow(this); // an earlier task with this key: catch up
  }

  _fail(err) {
    if (err instanceof ConnectionClosed && this.id === null) {
      err = new ConnectionClosed(`${err.message} before the hub confirmed the ${this.action} task; ` +
        'it may or may not have been accepted (publish with a key to retry safely)');
    }
    this._refuse(err);
  }

  _refuse(err) {
    if (this._refused || this._ended) return;
    this._refused = err;
    for (const w of this._acceptWaiters.splice(0)) w.reject(err);
    for (const w of this._endWaiters.splice(0)) w.reject(err);
    this._client._untrack(this);
  }

  _event(msg) {
    if (this._ended) return;
    const kind = msg.type;
    if (kind === 'start') {
      this._started();
      return;
    }
    const data = msg.data === undefined ? null : msg.data;
    if (msg.state && !older(msg.state, this.state)) this.state = msg.state;
    if (kind === 'update') {
      this.lastUpdate = data;
      this.updates += 1;
    } else if (kind === 'success') this.result = data;
    else if (kind === 'fail') this.error = data;
    this._listeners.emit(kind, data);
    if (FINAL.has(this.state)) this._finish();
  }

  /** The task started: its `start` event, its id in a `starts` message, or a view's started_at. */
  _started() {
    if (this._ended) return;
    if (this.state === 'init') this.state = 'start';
    if (this.started) return; // heard once: the view and the event may both tell it
    this.started = true;
    this._listeners.emit('start', null);
  }

  /**
   * The hub's view of the task (the answer to a `follow`: after a reconnect, or a repeated key):
   * catch up. A view older than what the handle has seen (read before events it already got)
   * moves nothing back: it adds only what it knows more of.
   */
  _snapshot(view) {
    if (this._ended) return;
    const newer = !older(view.state, this.state);
    if (newer) this.state = view.state;
    if ((view.updates || 0) > this.updates) {
      this.updates = view.updates;
      this.lastUpdate = view.last_update === undefined ? null : view.last_update;
      this._listeners.emit('update', this.lastUpdate);
    }
    if (view.started_at || this.state === 'start') this._started();
    if (newer && FINAL.has(this.state)) {
      this.result = view.result === undefined ? null : view.result;
      this.error = view.error || null;
      this._listeners.emit(this.state, this.state === 'success' ? this.result : this.state === 'fail' ? this.error : null);
      this._finish();
    }
  }

  _finish() {
    this._ended = true;
    for (const w of this._endWaiters.splice(0)) this._settle(w.resolve, w.reject);
    this._client._untrack(this);
  }
}

module.exports = { Task, Handle, quiet, FINAL };
