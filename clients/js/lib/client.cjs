'use strict';
// The client: publish tasks, work on the ones you subscribe to, broadcast events, watch.
// Speaks the hub's WebSocket protocol (docs/protocol.md) as src/taskhub/client/ does.
const { EventEmitter } = require('node:events');
const os = require('node:os');
const { version: VERSION } = require('../package.json');
const { Connection } = require('./connection.cjs');
const { Task, Handle, quiet } = require('./task.cjs');
const { ConnectionClosed, InvalidOption, PartitionUnavailable, TaskHubError, fromWire } = require('./errors.cjs');
const { validateAction, validateTopic, topicMatches } = require('./names.cjs');
const { toSeconds } = require('./intervals.cjs');

const MAX_ERROR_MESSAGE = 64 * 1024; // a fail must fit in a frame, whatever the handler threw
const CHAIN_ACTION = 'taskhub:chain';
const GROUP_ACTION = 'taskhub:group';
const PUB_OPTIONS = [
  'timeout', 'startTimeout', 'delay', 'at', 'priority', 'key', 'retries', 'maxAttempts',
  'backoff', 'backoffMax', 'onceEvery', 'partitionKey',
];
const SUB_OPTIONS = ['concurrency', 'group', 'observe', 'durable'];

function checkKeys(options, known, what) {
  for (const k of Object.keys(options)) {
    if (!known.includes(k)) {
      throw new InvalidOption(`unknown ${what} option '${k}'; known: ${known.join(', ')}`, { option: k });
    }
  }
}

function integer(value, option, min) {
  if (!Number.isInteger(value) || value < min) {
    throw new InvalidOption(`${option} must be an integer >= ${min}, got ${JSON.stringify(value)}`, { option });
  }
  return value;
}

/**
 * The wire `options` of a pub (seconds, epoch seconds) from the JS ones (milliseconds, Date,
 * interval strings). A number instead of an object is the end timeout in ms (the seeds' form).
 */
function pubOptions(options) {
  if (options === undefined || options === null) return {};
  if (typeof options === 'number' || typeof options === 'string') options = { timeout: options };
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidOption('pub options must be an object or a timeout in milliseconds', { option: 'options' });
  }
  checkKeys(options, PUB_OPTIONS, 'pub');
  const out = {};
  for (const [name, wire] of [['timeout', 'timeout'], ['startTimeout', 'start_timeout']]) {
    const v = options[name];
    if (v === null) out[wire] = null; // forever
    else if (v !== undefined) out[wire] = toSeconds(v, name);
  }
  for (const [name, wire] of [['delay', 'delay'], ['onceEvery', 'once_every'], ['backoff', 'backoff'], ['backoffMax', 'backoff_max']]) {
    if (options[name] !== undefined && options[name] !== null) out[wire] = toSeconds(options[name], name);
  }
  if (options.at !== undefined && options.at !== null) {
    const at = options.at instanceof Date ? options.at.getTime() : options.at;
    if (typeof at !== 'number' || !Number.isFinite(at)) {
      throw new InvalidOption(`at must be a Date or epoch milliseconds, got ${JSON.stringify(options.at)}`, { option: 'at' });
    }
    out.at = at / 1000;
  }
  if (options.priority !== undefined && options.priority !== 0) out.priority = integer(options.priority, 'priority', -(2 ** 53));
  if (options.retries !== undefined) out.retries = integer(options.retries, 'retries', 0);
  if (options.maxAttempts !== undefined) out.max_attempts = integer(options.maxAttempts, 'maxAttempts', 1);
  for (const [name, wire] of [['key', 'key'], ['partitionKey', 'partition_key']]) {
    const v = options[name];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') throw new InvalidOption(`${name} must be a string, got ${JSON.stringify(v)}`, { option: name });
    out[wire] = v;
  }
  return out;
}

class Subscription {
  constructor(client, action, handler, options) {
    this.client = client;
    this.action = action;
    this.handler = handler;
    this.group = options.group || null;
    this.concurrency = options.concurrency;
    this.observe = Boolean(options.observe);
    this.durable = Boolean(options.durable);
    this.running = 0;
    this.waiting = []; // offers acked while every slot is taken
    this._confirmed = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this._confirmed.catch(() => {});
    this._settled = false;
    // The one `sub` in flight (with its resends) and the send planned after a refusal past
    // those resends: one at most, so that a reconnect's own send and an older one never both
    // reach the hub.
    this._sending = null;
    this._again = null;
  }

  /** Forget the send in flight and the send planned (a newer send replaces them, or the
   * subscription is gone): no answer of theirs acts, none is sent again. */
  _stopSending() {
    if (this._again) { clearTimeout(this._again); this._again = null; }
    if (this._sending) { this._sending.wanted = false; this._sending = null; }
  }

  /** Resolves once the hub accepted the subscription (rejects e.g. with PermissionDenied). */
  get ready() { return this._confirmed; }

  /** `await client.sub(...)` waits for the hub to accept it (rejects e.g. with PermissionDenied). */
  then(onResolved, onRejected) { return this._confirmed.then(onResolved, onRejected); }

  message() {
    const msg = { op: 'sub', action: this.action, concurrency: this.concurrency };
    if (this.group) msg.group = this.group;
    if (this.observe) msg.observe = true;
    if (this.durable) msg.durable = true;
    return msg;
  }

  _confirm(err) {
    if (this._settled) return;
    this._settled = true;
    if (err) this._reject(err); else this._resolve(undefined);
  }
}

class Watch {
  constructor(client, pattern) {
    this.client = client;
    this.pattern = pattern;
    this.closed = false;
    this._queue = [];
    this._readers = [];
    this._listeners = new Set();
    this._confirmed = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this._confirmed.catch(() => {});
    this._settled = false;
  }

  /** Resolves once the hub accepted the watch (rejects e.g. with PermissionDenied). */
  started() { return this._confirmed.then(() => this); }

  /** Call cb(event) for every event; returns this. */
  on(type, cb) {
    if (type !== 'event') throw new TypeError(`a watch emits 'event', not '${type}'`);
    this._listeners.add(cb);
    return this;
  }

  async next() {
    if (this._queue.length) return { value: this._queue.shift(), done: false };
    if (this.closed) return { value: undefined, done: true };
    await this._confirmed;
    if (this._queue.length) return { value: this._queue.shift(), done: false };
    if (this.closed) return { value: undefined, done: true };
    return new Promise((resolve) => this._readers.push(resolve));
  }

  async return() {
    await this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() { return this; }

  /** Stop watching; an iteration ends after the events already queued. */
  async close() {
    if (this.closed) return;
    this._end();
    await this.client._unwatch(this);
  }

  _end(err) {
    this.closed = true;
    this._confirm(err || null);
    for (const r of this._readers.splice(0)) r({ value: undefined, done: true });
  }

  _deliver(event) {
    if (this.closed) return;
    for (const cb of this._listeners) {
      try { cb(event); } catch (e) { this.client._log.error(`taskhub: a watch listener threw: ${e.stack || e}`); }
    }
    const reader = this._readers.shift();
    if (reader) reader({ value: event, done: false });
    else if (this._listeners.size === 0) this._queue.push(event);
  }

  _confirm(err) {
    if (this._settled) return;
    this._settled = true;
    if (err) this._reject(err); else this._resolve(undefined);
  }
}

class Client {
  /**
   * @param {string | string[]} url  ws://host:port (http:// works too); several: the first that answers
   * @param {object} options  name, key, maxBackoff, connectTimeout, pingInterval (ms), logger, wsOptions
   */
  constructor(url = 'ws://127.0.0.1:8080', options = {}) {
    if (url !== null && typeof url === 'object' && !Array.isArray(url)) {
      // Seed 004's form: new Client({ url, clientName, key }).
      options = { ...url };
      url = options.url === undefined ? 'ws://127.0.0.1:8080' : options.url;
      delete options.url;
      if (options.clientName !== undefined) {
        if (options.name !== undefined) throw new InvalidOption('give name or clientName, not both', { option: 'clientName' });
        options.name = options.clientName;
        delete options.clientName;
      }
    }
    if (typeof url !== 'string' && !(Array.isArray(url) && url.length && url.every((u) => typeof u === 'string'))) {
      throw new InvalidOption('url must be a ws:// URL or a non-empty array of them', { option: 'url' });
    }
    checkKeys(options, ['name', 'key', 'maxBackoff', 'connectTimeout', 'pingInterval', 'maxFrame', 'logger', 'wsOptions'], 'Client');
    this.name = options.name || 'anonymous';
    this._log = options.logger === undefined ? console : options.logger || { warn() {}, error() {} };
    this._subs = new Map(); // action -> Subscription
    this._handles = new Map(); // task id -> [Handle]: accepted, unfinished; followed again on reconnect
    this._working = new Map(); // task id -> Task (deliveries held here)
    this._topics = new Map(); // pattern -> [handler]
    this._watches = new Map(); // pattern -> [Watch]
    this._unconfirmed = new Set(); // handles whose pub has no answer yet
    this._toldUnsubscribed = new Set(); // actions _nobodySubscribed warned about
    this._closing = false;
    this._closed = false;
    // The client's own events: 'connect' (welcome), 'disconnect' (error or null), 'close'.
    // Not an EventEmitter subclass: `emit` is the broadcast of seed 000's event system.
    this._local = new EventEmitter();
    this._conn = new Connection(Array.isArray(url) ? url : [url], {
      name: this.name,
      key: options.key || '',
      maxBackoff: options.maxBackoff ?? 5000,
      connectTimeout: options.connectTimeout ?? 10000,
      pingInterval: options.pingInterval ?? 5000,
      maxFrame: options.maxFrame ?? 16 * 1024 * 1024,
      wsOptions: options.wsOptions,
      logger: this._log,
      onMessage: (msg) => this._onMessage(msg),
      onConnect: () => this._restore(),
      onDisconnect: (fatal) => this._lost(fatal),
    });
  }

  /** Resolves with the client once connected (rejects with AuthenticationFailed, ConnectionClosed...). */
  connect() { return this._conn.ready.then(() => this); }

  get connected() { return this._conn.connected; }

  /** The client's own events: 'connect' (welcome), 'disconnect' (error or null), 'close'. */
  on(event, cb) { this._local.on(event, cb); return this; }

  once(event, cb) { this._local.once(event, cb); return this; }

  off(event, cb) { this._local.off(event, cb); return this; }

  /** What the hub said in its `welcome` (hub, connection, service, max_frame). */
  get welcome() { return this._conn.welcome; }

  /**
   * Graceful close: take no new tasks, let running handlers finish (up to `grace` ms, default
   * 10 s) and send their results, then close; deliveries not finished by then are handed back
   * (`release`: no try counted). Everything still pending then rejects with ConnectionClosed.
   */
  async close({ grace = 10000 } = {}) {
    if (this._closing) return this._closedPromise;
    this._closing = true;
    this._closedPromise = (async () => {
      if (this._conn.connected) {
        for (const action of this._subs.keys()) {
          // Answered before the close, or lost with it: either way nothing more is offered.
          this._conn.request({ op: 'unsub', action }).catch(() => {});
        }
      }
      // Never started: handed back at once, offered again elsewhere with no try counted.
      for (const sub of this._subs.values()) {
        for (const task of sub.waiting.splice(0)) this._handBack(task);
      }
      const running = [...this._working.values()].filter((t) => t._running);
      if (running.length && grace > 0) {
        let timer;
        await Promise.race([
          Promise.allSettled(running.map((t) => t._running)),
          new Promise((resolve) => { timer = setTimeout(resolve, grace); }),
        ]);
        clearTimeout(timer);
      }
      // Past the grace: hand back what still runs (no try counted, as for a waiting one),
      // rather than let the disconnect count a lost try against max_attempts.
      for (const t of [...this._working.values()]) {
        if (!t.observe && t._running) this._handBack(t);
        t._revoke('closed');
      }
      await this._conn.close();
      this._closed = true;
      const err = new ConnectionClosed('the client was closed');
      for (const handles of [...this._handles.values()]) for (const h of handles) h._refuse(err);
      for (const h of [...this._unconfirmed]) h._refuse(err);
      for (const sub of this._subs.values()) { sub._stopSending(); sub._confirm(err); }
      for (const watches of this._watches.values()) for (const w of watches) w._end(err);
      for (const entry of this._topics.values()) for (const w of entry.waiters.splice(0)) w.reject(err);
      this._local.emit('close');
    })();
    return this._closedPromise;
  }

  // --- connection events ---------------------------------------------------------------------
  _restore() {
    // Who we are, for the hub's dashboard (protocol §1, optional): the first message sent.
    this._conn.send({ op: 'hello', client: 'taskhub-js', version: VERSION,
      host: os.hostname().slice(0, 255), pid: process.pid, batch: true, starts: true }); // it reads `offers` and `starts`
    // After (re)connecting: subscribe again and catch up with the tasks we wait on.
    for (const sub of this._subs.values()) this._sendSub(sub);
    for (const topic of this._topics.keys()) this._sendSubscribe(topic);
    for (const pattern of this._watches.keys()) this._sendWatch(pattern);
    for (const handles of this._handles.values()) for (const h of handles) this._follow(h);
    queueMicrotask(() => this._local.emit('connect', this._conn.welcome));
  }

  _lost(fatal) {
    for (const entry of this._topics.values()) entry.confirmed = false;
    if (fatal) {
      // The first connection failed for good: nothing more will happen.
      for (const sub of this._subs.values()) sub._confirm(fatal);
      for (const watches of this._watches.values()) for (const w of watches) w._end(fatal);
      for (const h of [...this._unconfirmed]) h._refuse(fatal);
      for (const entry of this._topics.values()) for (const w of entry.waiters.splice(0)) w.reject(fatal);
      this._closed = true;
    }
    // Handlers keep running: a `return` after the reconnect is still accepted (fencing).
    this._local.emit('disconnect', fatal || null);
  }

  _follow(handle) {
    // The answer goes to the handle as it is read, before the rest of its frame: the hub sends
    // the task's next events after it, often in the same frame, and a promise's callback would
    // run after them and put the older view over them (docs/protocol.md §2).
    const receiver = {
      _answer: (reply) => {
        if (reply.op === 'ok') handle._snapshot(reply.task);
        else handle._refuse(fromWire(reply));
      },
      _fail: (err) => { if (!(err instanceof ConnectionClosed)) handle._refuse(err); },
    };
    try {
      this._conn.post({ op: 'follow', task: handle.id }, receiver);
    } catch (err) {
      receiver._fail(err); // closed: nothing more to follow
    }
  }

  _track(id, handle) {
    this._unconfirmed.delete(handle);
    const list = this._handles.get(id);
    if (list === undefined) this._handles.set(id, [handle]);
    else if (!list.includes(handle)) list.push(handle);
  }

  _untrack(handle) {
    this._unconfirmed.delete(handle);
    const list = handle.id !== null && this._handles.get(handle.id);
    if (!list) return;
    const i = list.indexOf(handle);
    if (i >= 0) list.splice(i, 1);
    if (!list.length) this._handles.delete(handle.id);
  }

  // --- subscribing ---------------------------------------------------------------------------
  /**
   * Work on tasks of `action`: handler(task) may be async; its return value is the result, a
   * throw fails the delivery. Options: concurrency (credit, default 1), group (named queue,
   * default the service), observe (see every task, the hub does not wait for it), durable.
   * Returns a Subscription: `await` it to know the hub accepted it.
   */
  sub(action, handler, options = {}) {
    validateAction(action);
    if (typeof handler !== 'function') throw new TypeError(`sub('${action}', handler): handler must be a function`);
    checkKeys(options, SUB_OPTIONS, 'sub');
    const concurrency = options.concurrency === undefined ? 1 : integer(options.concurrency, 'concurrency', 1);
    if (options.group !== undefined && options.group !== null && typeof options.group !== 'string') {
      throw new InvalidOption('group must be a string', { option: 'group' });
    }
    if (this._subs.has(action)) throw new InvalidOption(`this client already subscribes to '${action}'`, { option: 'action' });
    if (this._closing || this._conn.closed) throw new ConnectionClosed('the client is closed');
    const sub = new Subscription(this, action, handler, { ...options, concurrency });
    this._subs.set(action, sub);
    if (this._conn.connected) this._sendSub(sub);
    return sub;
  }

  _sendSub(sub) {
    sub._stopSending();
    const sending = { wanted: true };
    sub._sending = sending;
    this._conn.request(sub.message(), () => sending.wanted).then(
      () => {
        if (!sending.wanted) return;
        sub._sending = null;
        sub._confirm(null);
      },
      (err) => {
        if (!sending.wanted) return; // replaced by a newer send
        sub._sending = null;
        if (err instanceof ConnectionClosed) return; // sent again on reconnect
        if (sub._settled && err instanceof PartitionUnavailable && this._subs.get(sub.action) === sub) {
          // Sent again at a reconnect and refused past the resends: the partition is between
          // leaders for longer. The worker keeps its subscription and sends it every retry_after.
          const after = Number(err.details.retry_after ?? 1);
          sub._again = setTimeout(() => {
            sub._again = null;
            if (this._subs.get(sub.action) === sub && this._conn.connected && !this._closed) this._sendSub(sub);
          }, 1000 * (Number.isFinite(after) ? Math.min(10, Math.max(0, after)) : 1));
          return;
        }
        this._log.error(`taskhub: subscribing to ${sub.action} failed: ${err.message}`);
        if (this._subs.get(sub.action) === sub) this._subs.delete(sub.action);
        sub._confirm(err);
      });
  }

  /** Stop taking tasks of `action`; handlers already running finish. */
  async unsub(action) {
    const sub = this._subs.get(action);
    if (sub) sub._stopSending();
    if (this._subs.delete(action) && this._conn.connected) {
      await this._conn.request({ op: 'unsub', action });
    }
  }

  // --- publishing ----------------------------------------------------------------------------
  /**
   * Publish a task and return its Handle at once. The third argument is the end timeout in ms
   * (the seeds' form) or an options object: timeout, startTimeout (ms, or null = forever), delay
   * (ms or '7 days'), at (Date), priority, key, retries, maxAttempts, backoff, backoffMax,
   * onceEvery, partitionKey.
   */
  pub(action, payload = null, options = undefined) {
    validateAction(action);
    const opts = pubOptions(options);
    const msg = { op: 'pub', action, payload: payload === undefined ? null : payload };
    if (Object.keys(opts).length) msg.options = opts;
    return this._publish(action, msg);
  }

  _nobodySubscribed(action, taskId) {
    // The hub pooled the task: say so once per action, since a mistyped action otherwise
    // waits in silence until its start timeout (by default, never).
    if (this._toldUnsubscribed.has(action)) return;
    this._toldUnsubscribed.add(action);
    this._log.warn(`taskhub: no worker subscribes to '${action}': task ${taskId} waits until one does ` +
      '(is the action spelled right?) [said once per action]');
  }

  /**
   * Publish a list of tasks, [[action, payload, options?], ...]; their Handles, in order.
   * Every item is checked first (action name, options, plain JSON, size): a bad one throws,
   * naming its index, and nothing is sent. They leave in batched `pubs` messages and the hub
   * answers each on its own: one it refuses fails only its own handle.
   */
  pubMany(items) {
    const ready = Array.from(items, (item, i) => {
      const [action, payload, options] = Array.isArray(item) ? item : [item && item.action, item && item.payload, item && item.options];
      try {
        validateAction(action);
        const opts = pubOptions(options);
        const msg = { op: 'pub', action, payload: payload === undefined ? null : payload };
        if (Object.keys(opts).length) msg.options = opts;
        return [action, msg, this._conn.encode(msg, 24)];
      } catch (err) {
        err.message = `pubMany item ${i}${typeof action === 'string' ? ` ('${action}')` : ''}: ${err.message}; nothing was sent`;
        if (err.details) err.details.index = i;
        throw err;
      }
    });
    return ready.map(([action, msg, part]) => this._publish(action, msg, part));
  }

  _publish(action, msg, part = undefined) {
    const handle = new Handle(this, action);
    if (this._closing || this._conn.closed) {
      handle._refuse(new ConnectionClosed('the client is closed'));
      return handle;
    }
    // Queued while (re)connecting: it leaves with the next connection. Throws, sending nothing,
    // if the message is not plain JSON or too large. A loop turn's pubs leave as one `pubs`.
    if (msg.op === 'pub') this._conn.postPub(msg, handle, part);
    else this._conn.post(msg, handle);
    this._unconfirmed.add(handle);
    return handle;
  }

  /** Run steps one after another: [[action, payload, options?], ...]; a null payload gets the previous result. */
  chain(steps, { mergeInput = false } = {}) {
    const msg = this._chainMsg(steps, 'chain');
    if (mergeInput) msg.merge_input = true;
    return this._publish(CHAIN_ACTION, msg);
  }

  /** Run steps at once; the result is the list of their results, in order. */
  group(steps) {
    return this._publish(GROUP_ACTION, this._chainMsg(steps, 'group'));
  }

  _chainMsg(steps, mode) {
    if (!Array.isArray(steps) || steps.length === 0) {
      throw new InvalidOption(`a ${mode} needs a non-empty array of steps`, { option: 'steps' });
    }
    return {
      op: 'chain',
      mode,
      steps: steps.map((step, i) => {
        const [action, payload, options] = Array.isArray(step) ? step : [step.action, step.payload, step.options];
        try {
          validateAction(action);
        } catch (err) {
          err.message = `step ${i}: ${err.message}`;
          throw err;
        }
        const item = { action, payload: payload === undefined ? null : payload };
        const opts = pubOptions(options);
        if (Object.keys(opts).length) item.options = opts;
        return item;
      }),
    };
  }

  /** A task as the hub has it now (the task view of docs/protocol.md). */
  async get(taskId) { return (await this._conn.request({ op: 'get', task: taskId })).task; }

  /** A task's payload (the view leaves it out). */
  async payload(taskId) {
    const reply = await this._conn.request({ op: 'payload', task: taskId });
    return reply.payload === undefined ? null : reply.payload;
  }

  /** Cancel a task by id (the publisher, or a service with pub permission for its action). */
  async cancel(taskId) { await this._conn.request({ op: 'cancel', task: taskId }); }

  // --- broadcast events ----------------------------------------------------------------------
  /** Call handler(data, topic, from) for every event on `topic` (`*` segment, trailing `>`). */
  async subscribe(topic, handler) {
    validateTopic(topic, true);
    if (typeof handler !== 'function') throw new TypeError(`subscribe('${topic}', handler): handler must be a function`);
    if (this._closing || this._conn.closed) throw new ConnectionClosed('the client is closed');
    let entry = this._topics.get(topic);
    if (entry) {
      entry.handlers.push(handler);
    } else {
      entry = { handlers: [handler], waiters: [] };
      this._topics.set(topic, entry);
      if (this._conn.connected) this._sendSubscribe(topic);
    }
    if (entry.confirmed) return;
    // Resolved once the hub accepted it: at once if connected, else with the (re)connection.
    await new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
  }

  _sendSubscribe(topic) {
    this._conn.request({ op: 'subscribe', topic }).then(
      () => {
        const entry = this._topics.get(topic);
        if (!entry) return;
        entry.confirmed = true;
        for (const w of entry.waiters.splice(0)) w.resolve();
      },
      (err) => {
        if (err instanceof ConnectionClosed && !this._closing) return; // sent again on reconnect
        const entry = this._topics.get(topic);
        if (!entry) return;
        this._log.error(`taskhub: subscribing to ${topic} failed: ${err.message}`);
        this._topics.delete(topic);
        for (const w of entry.waiters.splice(0)) w.reject(err);
      });
  }

  /** Stop every handler of `topic` (the same string given to subscribe). */
  async unsubscribe(topic) {
    if (this._topics.delete(topic) && this._conn.connected) {
      await this._conn.request({ op: 'unsubscribe', topic });
    }
  }

  /** Broadcast data to every other connection subscribed to a matching topic; resolves with how many. */
  async emit(topic, data) {
    validateTopic(topic, false);
    const reply = await this._conn.request({ op: 'emit', topic, data: data === undefined ? null : data });
    return reply.receivers || 0;
  }

  _broadcast(msg) {
    const topic = String(msg.topic || '');
    const data = msg.data === undefined ? null : msg.data;
    for (const [pattern, entry] of this._topics) {
      if (!topicMatches(pattern, topic)) continue;
      for (const handler of [...entry.handlers]) {
        try {
          const out = handler(data, topic, msg.from);
          if (out && typeof out.then === 'function') {
            out.then(undefined, (err) => this._log.error(`taskhub: the handler of event ${topic} failed: ${err && err.stack ? err.stack : err}`));
          }
        } catch (err) {
          this._log.error(`taskhub: the handler of event ${topic} threw: ${err && err.stack ? err.stack : err}`);
        }
      }
    }
  }

  // --- watching task events ------------------------------------------------------------------
  /** Every task event of the actions matching `pattern`: `for await (const e of client.watch('email:*'))`. */
  watch(pattern) {
    validateTopic(pattern, true);
    const w = new Watch(this, pattern);
    if (this._closing || this._conn.closed) {
      w._end(new ConnectionClosed('the client is closed'));
      return w;
    }
    const list = this._watches.get(pattern);
    if (list) {
      list.push(w);
      if (list._confirmed) w._confirm(null);
      return w;
    }
    this._watches.set(pattern, [w]);
    if (this._conn.connected) this._sendWatch(pattern);
    return w;
  }

  _sendWatch(pattern) {
    this._conn.request({ op: 'watch', pattern }).then(
      () => {
        const list = this._watches.get(pattern) || [];
        list._confirmed = true;
        for (const w of list) w._confirm(null);
      },
      (err) => {
        if (err instanceof ConnectionClosed) return;
        const list = this._watches.get(pattern) || [];
        this._watches.delete(pattern);
        for (const w of list) w._end(err);
      });
  }

  async _unwatch(w) {
    const list = this._watches.get(w.pattern);
    if (!list || !list.includes(w)) return;
    list.splice(list.indexOf(w), 1);
    if (list.length) return;
    this._watches.delete(w.pattern);
    if (this._conn.connected) {
      try { await this._conn.request({ op: 'unwatch', pattern: w.pattern }); } catch (err) {
        if (!(err instanceof ConnectionClosed)) throw err;
      }
    }
  }

  // --- schedules, queues, dead letters (docs/scheduling.md) -----------------------------------
  /** Create or replace schedule `name`: publish `action` at every slot of `cron` (5 fields). */
  async schedule(name, cron, action, payload = null, { timezone = 'UTC', ...options } = {}) {
    validateAction(action);
    const msg = { op: 'schedule', name, cron, action, payload, timezone };
    const opts = pubOptions(options);
    if (Object.keys(opts).length) msg.options = opts;
    return (await this._conn.request(msg)).schedule;
  }

  async schedules() { return (await this._conn.request({ op: 'schedules' })).schedules; }

  async unschedule(name) { return (await this._conn.request({ op: 'unschedule', name })).schedule; }

  /** Every group queue this credential may see: action, group, durable, workers, waiting, in_flight. */
  async queues() { return (await this._conn.request({ op: 'queues' })).queues; }

  /** Fail the group's waiting deliveries (reason `purged`); forget also removes a durable subscription. */
  async purge(action, group, { forget = false } = {}) {
    return (await this._conn.request({ op: 'purge', action, group, forget })).purged;
  }

  async deadLetters(action = null) {
    const msg = { op: 'dead_letters' };
    if (action !== null) msg.action = action;
    return (await this._conn.request(msg)).dead_letters;
  }

  async deadLetter(taskId) { return (await this._conn.request({ op: 'dead_letter', task: taskId })).dead_letter; }

  /** Publish a fresh copy of a dead letter; resolves with the new task's id. */
  async requeue(taskId) { return (await this._conn.request({ op: 'requeue', task: taskId })).task; }

  // --- messages from the hub -----------------------------------------------------------------
  _onMessage(msg) {
    switch (msg.op) {
      case 'event': {
        if (msg.watched) {
          for (const [pattern, list] of this._watches) {
            if (topicMatches(pattern, String(msg.action || ''))) for (const w of [...list]) w._deliver(msg);
          }
          return;
        }
        const handles = this._handles.get(msg.task);
        if (handles) for (const h of [...handles]) h._event(msg);
        const task = this._working.get(msg.task);
        if (task) task._event(msg);
        return;
      }
      case 'starts': // followed tasks that started, by id, in place of their start events
        for (const id of msg.tasks) {
          const handles = this._handles.get(id);
          if (handles !== undefined) for (const h of handles) h._started();
        }
        return;
      case 'offers': // several at once (docs/protocol.md, "Batched messages")
        for (const item of msg.items) this._offered(item);
        return;
      case 'offer':
        this._offered(msg);
        return;
      case 'broadcast':
        this._broadcast(msg);
        return;
      case 'revoke': {
        const task = this._working.get(msg.task);
        if (task && (msg.attempt === undefined || task.attempt === msg.attempt)) {
          task._revoke(String(msg.reason || 'revoked'));
          this._release(task);
        }
        return;
      }
      case 'error':
        this._log.warn(`taskhub: the hub reported: ${msg.message} (${msg.code})`);
        return;
      default:
    }
  }

  _offered(msg) {
    const sub = this._subs.get(msg.action);
    const task = new Task(this, msg);
    if (task.observe && (this._closing || sub === undefined)) return; // a copy: no answer
    if (this._closing || sub === undefined) {
      // Stopping, or unsubscribed meanwhile: hand it back (offered again elsewhere, no try
      // counted). A `drop` here would have ended the delivery as done without a result.
      this._handBack(task);
      return;
    }
    task._sub = sub;
    this._working.set(task.id, task);
    if (task.observe || sub.running < sub.concurrency) {
      this._run(sub, task);
    } else {
      // No free slot: acknowledge receipt now (the pickup window no longer applies).
      this._conn.send({ op: 'ack', task: task.id, attempt: task.attempt });
      sub.waiting.push(task);
    }
  }

  _handBack(task) {
    if (this._conn.connected) this._conn.send({ op: 'release', task: task.id, attempt: task.attempt });
  }

  _release(task) {
    // A slot is freed once per delivery: when its handler ends, or when the hub revokes it
    // (the hub then gives the credit to another task; the handler should stop: task.signal).
    if (task._released) return;
    task._released = true;
    if (this._working.get(task.id) === task) this._working.delete(task.id);
    const sub = task._sub;
    if (task.observe || !task._started) {
      const i = sub.waiting.indexOf(task);
      if (i >= 0) sub.waiting.splice(i, 1);
      return;
    }
    sub.running -= 1;
    while (sub.running < sub.concurrency && sub.waiting.length && !this._closing) {
      this._run(sub, sub.waiting.shift());
    }
  }

  _run(sub, task) {
    task._started = true;
    if (!task.observe) sub.running += 1;
    task._running = this._work(sub, task).finally(() => this._release(task));
  }

  async _work(sub, task) {
    if (!task.observe) {
      task.pickedUp = true;
      try {
        this._conn.send({ op: 'pickup', task: task.id, attempt: task.attempt });
      } catch { /* closed: the hub takes the delivery back */ }
      // Let the pickup leave before the handler runs: a handler that blocks the event loop
      // would otherwise keep it queued, and the hub would not count the run as a try when the
      // connection dies of it (docs/decisions.md, "The pickup leaves before the handler runs").
      await new Promise((resolve) => setImmediate(resolve));
      if (task.revoked) return;
    }
    let result;
    try {
      result = await sub.handler(task);
    } catch (err) {
      if (task.revoked) return; // the hub took it away (cancelled, timed out): nothing to say
      if (task.observe) this._log.error(`taskhub: observer of ${task.action} threw: ${err && err.stack ? err.stack : err}`);
      else if (task.returned || task.dropped) {
        this._log.error(`taskhub: the handler of ${task.action} (task ${task.id}, attempt ${task.attempt}) threw after task.${task.returned ? 'success' : 'drop'}(); the delivery already ended, the error is not sent: ${err && err.stack ? err.stack : err}`);
      } else this._sendFail(task, err);
      return;
    }
    if (task.dropped || task.returned || task.observe || task.revoked) return;
    try {
      this._conn.send({ op: 'return', task: task.id, attempt: task.attempt, result: result === undefined ? null : result });
    } catch (err) {
      if (err instanceof ConnectionClosed) return;
      // Not plain JSON, or too large: the delivery fails with why, at once; a retry would not help.
      this._sendFail(task, err, 'its result could not be sent: ', false);
    }
  }

  _sendFail(task, err, what = '', retry = true) {
    const type = err instanceof Error ? (err.name || err.constructor.name || 'Error') : 'Error';
    let message = what + (err instanceof Error ? err.message : String(err));
    if (message.length > MAX_ERROR_MESSAGE) {
      message = `${message.slice(0, MAX_ERROR_MESSAGE)}... (${message.length} characters in all)`;
    }
    const msg = { op: 'fail', task: task.id, attempt: task.attempt, error: { type, message } };
    if (!retry) msg.retry = false;
    try { this._conn.send(msg); } catch (e) { this._log.error(`taskhub: could not send the failure of task ${task.id}: ${e.message}`); }
  }
}

module.exports = { Client, Subscription, Watch, pubOptions, TaskHubError };
