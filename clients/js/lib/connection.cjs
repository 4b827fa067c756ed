'use strict';
// One logical connection to a hub (docs/protocol.md): dials the first URL that answers, waits
// for `welcome`, batches what is sent in one event-loop turn into one frame, matches `ok`/`error`
// answers to requests by `ref`, pings the hub, and reconnects with jittered backoff.
const WebSocket = require('ws');
const { checkPlain } = require('./plain.cjs');
const {
  TaskHubError, ConnectionClosed, FrameTooLarge, fromWire,
} = require('./errors.cjs');

const WS_PATH = '/v1/ws';
// A long burst of messages in one loop turn leaves in frames of about this size while it is
// still being made, as the Python client does: the hub starts on the first frames while the
// caller goes on publishing.
const EARLY_SEND = 64 * 1024;
// Items per batched message this client sends (at most the hub's welcome.max_batch), as the
// Python client: the hub applies a long frame in chunks of 32 messages and never splits one.
const BATCH_ITEMS = 64;
// The single kinds a worker sends in runs, by how their JSON starts (op is the first key).
const STEPS = new Map([['{"op":"ack",', 'acks'], ['{"op":"pickup",', 'pickups'], ['{"op":"return",', 'returns']]);
// Requests sent again when the hub answers `partition_unavailable` (as the Python client,
// docs/workers.md "When a partition has no leader"): the hub answers that code before applying
// anything, so nothing was stored. After its retry_after (1 s, spread by up to half), at most
// RETRIES times; then the error goes to the caller. A pub in a batched `pubs` is sent alone.
const RETRIED = new Set(['pub', 'chain', 'follow', 'get', 'payload', 'sub', 'unsub']);
const RETRIES = 5;

function retryDelay(reply) {
  const after = Number((reply.details || {}).retry_after ?? 1);
  return Math.min(10, Math.max(0, Number.isFinite(after) ? after : 1)) * 1000 * (1 + Math.random() / 2);
}

/** Accept ws://host:port, http://host:port, or a URL that already ends with /v1/ws. */
function wsUrl(url) {
  let u = String(url);
  if (u.startsWith('http://')) u = 'ws://' + u.slice(7);
  else if (u.startsWith('https://')) u = 'wss://' + u.slice(8);
  else if (!/^wss?:\/\//.test(u)) u = 'ws://' + u;
  u = u.replace(/\/+$/, '');
  if (!u.endsWith(WS_PATH)) u += WS_PATH;
  return u;
}

class Connection {
  constructor(urls, options) {
    this.urls = urls.map(wsUrl);
    this.name = options.name;
    this.key = options.key;
    this.onMessage = options.onMessage;
    this.onConnect = options.onConnect;
    this.onDisconnect = options.onDisconnect;
    this.maxBackoff = options.maxBackoff;
    this.connectTimeout = options.connectTimeout;
    this.pingInterval = options.pingInterval;
    this.maxFrame = options.maxFrame;
    this.wsOptions = options.wsOptions || {};
    this.log = options.logger;
    this.welcome = {};
    this.connected = false;
    this.closing = false;
    this.closed = false;
    this.ws = null;
    // Encoded messages (strings), in order; a pub is {pub, receiver} until the flush gives it
    // its ref (its own, or its batch's: docs/protocol.md, "Batched messages").
    this.outbox = [];
    this.outboxSize = 0;
    this.flushScheduled = false;
    this.nextRef = 1;
    this.pending = new Map(); // ref -> receiver {_answer(msg), _fail(err)}
    this.urlIndex = 0;
    this.everConnected = false;
    this.wake = null; // resolves the reconnect sleep early (close)
    this.lost = null; // resolves when the current socket closes
    this.ready = new Promise((resolve, reject) => { this.readyResolve = resolve; this.readyReject = reject; });
    this.ready.catch(() => {}); // awaited by whoever wants it; never an unhandled rejection
    this.loop = this.run();
  }

  // --- life -----------------------------------------------------------------------------------
  async run() {
    let delay = 50;
    const deadline = Date.now() + this.connectTimeout;
    while (!this.closing) {
      let ws;
      try {
        ws = await this.dial();
      } catch (err) {
        if (this.closing) break;
        if (!this.everConnected) {
          // The first connection: refused credentials are final; an unreachable hub is tried
          // until connectTimeout, as the Python client's connect() does.
          const final = err instanceof TaskHubError && !(err instanceof ConnectionClosed);
          if (final || Date.now() + delay > deadline) {
            const why = final ? err : new ConnectionClosed(
              `could not connect to ${this.urls.join(', ')}: ${err.message}`);
            this.log.error(`taskhub: ${why.message}`);
            this.fatal(why);
            return;
          }
        } else {
          this.log.warn(`taskhub: reconnect failed (${err.message}); next try in ${delay} ms`);
        }
        await this.sleep(delay * (this.everConnected ? 0.5 + Math.random() : 1));
        delay = Math.min(delay * 2, this.maxBackoff);
        continue;
      }
      delay = 50;
      await ws.taskhubLost; // attached by dial() as the welcome was read
      this.detach();
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => { clearTimeout(timer); resolve(); };
    });
  }

  dial() {
    const url = this.urls[this.urlIndex++ % this.urls.length];
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err, value) => {
        if (settled) return;
        settled = true;
        if (err) {
          ws.removeAllListeners('message');
          ws.removeAllListeners('close');
          ws.on('error', () => {});
          ws.terminate();
          reject(err);
        } else resolve(value);
      };
      const ws = new WebSocket(url, {
        headers: { Authorization: `Bearer ${this.name}:${this.key}` },
        perMessageDeflate: false,
        maxPayload: this.maxFrame,
        handshakeTimeout: this.connectTimeout,
        ...this.wsOptions,
      });
      ws.on('error', (err) => settle(err));
      ws.on('unexpected-response', (req, res) => {
        settle(new ConnectionClosed(`${url} refused the WebSocket handshake: HTTP ${res.statusCode}`));
      });
      ws.on('close', (code, reason) => {
        settle(new ConnectionClosed(`${url} closed the connection (${code} ${reason})`));
      });
      ws.once('message', (data) => {
        let first;
        try { first = JSON.parse(data.toString()); } catch { first = null; }
        if (first && first.op === 'error') settle(fromWire(first));
        else if (first && first.op === 'welcome') {
          ws.removeAllListeners('close');
          ws.removeAllListeners('error');
          this.welcome = first;
          // Attached at once, not after an await: the hub's next messages may follow in the
          // same chunk of the socket, and ws emits them synchronously.
          this.attach(ws);
          settle(null, ws);
        } else settle(new ConnectionClosed(`${url} did not greet with a welcome message`));
      });
    });
  }

  attach(ws) {
    this.ws = ws;
    ws.taskhubLost = new Promise((resolve) => { this.lost = resolve; });
    let alive = true;
    ws.on('message', (data) => { alive = true; this.dispatch(data); });
    ws.on('pong', () => { alive = true; });
    ws.on('error', (err) => this.log.warn(`taskhub: connection error: ${err.message}`));
    ws.on('close', () => { if (this.lost) this.lost(); });
    // The hub pings us; we ping it too, so a hub that vanished without a FIN is noticed.
    this.pinger = setInterval(() => {
      if (!alive) { ws.terminate(); return; }
      alive = false;
      try { ws.ping(); } catch { /* closing */ }
    }, this.pingInterval);
    this.everConnected = true;
    try {
      this.onConnect(); // queues the restore (sub, subscribe, watch, follow) first
    } catch (err) {
      this.log.error(`taskhub: restoring state after connecting failed: ${err.stack || err}`);
    }
    this.connected = true;
    this.readyResolve();
    this.flush();
    if (this.closing) ws.close(1000, 'client closed'); // close() came while this one dialled
  }

  detach() {
    clearInterval(this.pinger);
    this.connected = false;
    this.ws = null;
    this.lost = null;
    this.failPending(new ConnectionClosed('the connection to the hub was lost'));
    if (!this.closing) {
      this.log.warn('taskhub: connection to the hub lost; reconnecting');
      this.onDisconnect();
    }
  }

  fatal(err) {
    this.closing = true;
    this.closed = true;
    this.readyReject(err);
    this.failPending(err, true);
    this.onDisconnect(err);
  }

  async close() {
    if (this.closed) return;
    this.closing = true;
    this.flush();
    if (this.wake) this.wake();
    const ws = this.ws;
    if (ws) {
      const gone = new Promise((resolve) => ws.once('close', resolve));
      ws.close(1000, 'client closed');
      const timer = setTimeout(() => ws.terminate(), 2000);
      await gone;
      clearTimeout(timer);
    }
    await this.loop;
    this.closed = true;
    this.readyReject(new ConnectionClosed('the client was closed before it connected'));
    this.failPending(new ConnectionClosed('the client was closed'), true);
  }

  failPending(err, everything = false) {
    const pending = this.pending;
    this.pending = new Map();
    // Requests still queued fail here, so they must not go out on the next connection; other
    // messages (worker steps) still go: a `return` of an older attempt is accepted (fencing).
    const queued = this.outbox;
    const unsent = []; // pubs queued without a ref yet: they fail with the requests
    this.outbox = [];
    for (const part of queued) {
      if (typeof part !== 'string') unsent.push(part.receiver);
      else if (!everything && !('ref' in JSON.parse(part))) this.outbox.push(part);
    }
    this.outboxSize = this.outbox.reduce((n, part) => n + part.length, 0);
    for (const receiver of [...pending.values(), ...unsent]) {
      try { receiver._fail(err); } catch (e) { this.log.error(`taskhub: ${e.stack || e}`); }
    }
  }

  // --- receiving ------------------------------------------------------------------------------
  dispatch(data) {
    let frame;
    try { frame = JSON.parse(data.toString()); } catch {
      this.log.error('taskhub: the hub sent a frame that is not JSON; ignored');
      return;
    }
    for (const msg of Array.isArray(frame) ? frame : [frame]) {
      const ref = msg.ref;
      if (ref !== undefined && ref !== null && (msg.op === 'ok' || msg.op === 'error')) {
        const receiver = this.pending.get(ref);
        if (receiver !== undefined) {
          this.pending.delete(ref);
          try { receiver._answer(msg); } catch (e) { this.log.error(`taskhub: ${e.stack || e}`); }
          continue;
        }
      }
      try { this.onMessage(msg); } catch (e) {
        this.log.error(`taskhub: handling ${msg.op} from the hub failed: ${e.stack || e}`);
      }
    }
  }

  // --- sending --------------------------------------------------------------------------------
  /** Encode a message alone; throws (sending nothing) if it is not JSON or too large. */
  encode(msg, room = 0) {
    checkPlain(msg, `${msg.op} message`, '');
    const part = JSON.stringify(msg); // TypeError for a cycle
    const limit = this.frameLimit() - room; // room: for a ref added later
    if (part.length > limit) {
      throw new FrameTooLarge(
        `${msg.op} message of ${part.length} characters is over the hub's frame limit of ${limit}; it was not sent`);
    }
    return part;
  }

  frameLimit() {
    return this.welcome.max_frame || this.maxFrame;
  }

  /** Queue a message without a ref; everything queued in one loop turn leaves as one frame. */
  send(msg) {
    if (this.closed) throw new ConnectionClosed('the client is closed');
    this.queue(this.encode(msg));
  }

  /** Send with a ref; the receiver's _answer gets the ok/error, or _fail why none will come. */
  post(msg, receiver) {
    if (this.closing || this.closed) throw new ConnectionClosed('the client is closed');
    if (RETRIED.has(msg.op) && !receiver._again) receiver = this.retrying(msg.op, receiver, (r) => this.post(msg, r));
    const ref = this.nextRef++;
    msg.ref = ref;
    const part = this.encode(msg);
    this.pending.set(ref, receiver);
    this.queue(part);
  }

  /** `receiver`, but a `partition_unavailable` answer makes it call `again(itself)` later. */
  retrying(op, receiver, again) {
    let tries = 0;
    const conn = this;
    return {
      _again: true,
      _answer(reply) {
        if (reply.op !== 'error' || reply.code !== 'partition_unavailable' || tries >= RETRIES
            || conn.closing || conn.closed) {
          receiver._answer(reply);
          return;
        }
        tries += 1;
        const wait = retryDelay(reply);
        if (conn.log.info) conn.log.info(`taskhub: ${op} answered partition_unavailable (${reply.message}); sending it again in ${Math.round(wait)} ms (${tries} of ${RETRIES})`);
        setTimeout(() => {
          if (receiver._wanted && !receiver._wanted()) return; // a newer send replaced it
          try { again(this); } catch { receiver._answer(reply); } // closed meanwhile
        }, wait);
      },
      _fail(err) { receiver._fail(err); },
    };
  }

  /** Send a `pub`; its receiver is answered as for post(). The pubs of one loop turn leave as
   * one `pubs` message when the hub's welcome has max_batch; the ref is given at the flush. */
  postPub(msg, receiver, part = undefined) {
    if (this.closing || this.closed) throw new ConnectionClosed('the client is closed');
    const pub = part === undefined ? this.encode(msg, 24) : part;
    const again = (r) => {
      if (this.closing || this.closed) throw new ConnectionClosed('the client is closed');
      this.outbox.push({ pub, receiver: r });
      this.queued(pub.length + 16);
    };
    again(this.retrying('pub', receiver, again));
  }

  /** Send with a ref; a promise of the hub's `ok` message, rejected with its `error`. While
   * `wanted()` is false, a `partition_unavailable` answer is not sent again (and the promise
   * never settles): a subscription's older send that a newer one replaced. */
  request(msg, wanted = undefined) {
    return new Promise((resolve, reject) => {
      this.post(msg, {
        _answer: (reply) => (reply.op === 'ok' ? resolve(reply) : reject(fromWire(reply))),
        _fail: reject,
        _wanted: wanted,
      });
    });
  }

  queue(part) {
    this.outbox.push(part);
    this.queued(part.length);
  }

  queued(size) {
    this.outboxSize += size;
    if (this.outboxSize >= EARLY_SEND && this.connected) {
      this.flush();
      return;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => { this.flushScheduled = false; this.flush(); });
    }
  }

  flush() {
    const ws = this.ws;
    if (!this.outbox.length || !ws || !this.connected || ws.readyState !== WebSocket.OPEN) return;
    const limit = this.frameLimit();
    const parts = this.batched(this.outbox, limit);
    this.outbox = [];
    this.outboxSize = 0;
    let chunk = [];
    let size = 1;
    const out = () => { ws.send(chunk.length === 1 ? chunk[0] : '[' + chunk.join(',') + ']'); };
    for (const part of parts) {
      if (chunk.length && size + part.length + 1 > limit) {
        out();
        chunk = [];
        size = 1;
      }
      chunk.push(part);
      size += part.length + 1;
    }
    if (chunk.length) out();
  }

  /** The messages for the queued entries: runs of pubs, acks, pickups or returns as one
   * batched message each when the hub takes them; every pub given its ref. */
  batched(entries, limit) {
    const batch = Math.min(BATCH_ITEMS, this.welcome.max_batch || 0);
    const room = limit - 64; // a batch's own bytes besides its items
    const out = [];
    const item = (part) => '{' + part.slice(part.indexOf(',') + 1);
    for (let i = 0; i < entries.length;) {
      const entry = entries[i];
      const kind = typeof entry === 'string' ? STEPS.get(entry.slice(0, entry.indexOf(',') + 1)) : 'pubs';
      let j = i + 1;
      let size = typeof entry === 'string' ? entry.length : entry.pub.length;
      while (kind && j < entries.length && j - i < batch) {
        const next = entries[j];
        const part = typeof next === 'string' ? next : next.pub;
        const same = kind === 'pubs' ? typeof next !== 'string' : typeof next === 'string' && part.startsWith(entry.slice(0, entry.indexOf(',') + 1));
        if (!same || size + part.length + 1 > room) break;
        size += part.length + 1;
        j += 1;
      }
      const run = entries.slice(i, j);
      i = j;
      if (kind === 'pubs') {
        const ref = this.nextRef++;
        if (run.length === 1) {
          this.pending.set(ref, run[0].receiver);
          out.push(`${run[0].pub.slice(0, -1)},"ref":${ref}}`);
        } else {
          this.pending.set(ref, batchAnswer(run.map((e) => e.receiver), this.log));
          out.push(`{"op":"pubs","ref":${ref},"items":[${run.map((e) => item(e.pub)).join(',')}]}`);
        }
      } else if (run.length === 1) out.push(entry);
      else out.push(`{"op":"${kind}","items":[${run.map(item).join(',')}]}`);
    }
    return out;
  }
}

/** The receiver of a `pubs`: each item's answer (the ok's `items`, in order) to its own
 * receiver, or the batch's error or loss to every one of them. */
function batchAnswer(receivers, log) {
  const tell = (fn) => { try { fn(); } catch (e) { log.error(`taskhub: ${e.stack || e}`); } };
  return {
    _answer(reply) {
      const items = reply.op === 'ok' ? reply.items : undefined;
      if (!Array.isArray(items)) {
        for (const r of receivers) tell(() => r._answer(reply));
        return;
      }
      receivers.forEach((r, i) => {
        const answer = items[i];
        if (answer === undefined) {
          tell(() => r._fail(new TaskHubError('the hub\'s answer to a batch of pubs left this one out')));
        } else if (answer.error) tell(() => r._answer({ op: 'error', ...answer.error }));
        else tell(() => r._answer({ op: 'ok', ...answer }));
      });
    },
    _fail(err) { for (const r of receivers) tell(() => r._fail(err)); },
  };
}

module.exports = { Connection, wsUrl };
