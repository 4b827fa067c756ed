// Type declarations for the TaskHub Node.js client (hand-written; the code is plain JavaScript).
// Durations given as numbers are milliseconds; strings are intervals such as '7 days', '1h30m', 'PT1H'.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Duration = number | string;

export interface Logger {
  warn(message: string): void;
  error(message: string): void;
}

export interface ClientOptions {
  /** Credential (service) name; default 'anonymous' (fine for a hub without credentials). */
  name?: string;
  /** Credential key. */
  key?: string;
  /** Longest wait between reconnect attempts, ms (default 5000). */
  maxBackoff?: number;
  /** How long the first connection is tried before giving up, ms (default 10000). */
  connectTimeout?: number;
  /** Ping the hub this often, ms; a hub that does not answer in time is dropped (default 5000). */
  pingInterval?: number;
  /** Largest frame accepted from the hub, bytes (default 16 MiB). */
  maxFrame?: number;
  /** Where warnings and errors go (default console; null: nowhere). */
  logger?: Logger | null;
  /** Extra options for the `ws` WebSocket (TLS: ca, cert, rejectUnauthorized...). */
  wsOptions?: Record<string, unknown>;
}

export interface PubOptions {
  /** End timeout after a worker started it (ms or interval); null = forever; unset = hub default. */
  timeout?: Duration | null;
  /** How long it may wait for a worker to start it; null = forever; unset = hub default. */
  startTimeout?: Duration | null;
  /** Offer it only after this long ('7 days'). */
  delay?: Duration;
  /** Offer it only from this time (a Date or epoch ms). */
  at?: Date | number;
  /** Higher first within a group's queue (default 0). */
  priority?: number;
  /** Idempotency key: a pub with the same action and key returns the same task. */
  key?: string;
  /** Retries after a handler failure. */
  retries?: number;
  /** Most tries (lost or failed) before the delivery fails with reason 'attempts'. */
  maxAttempts?: number;
  /** First retry delay (doubled per retry, with jitter). */
  backoff?: Duration;
  /** Longest retry delay. */
  backoffMax?: Duration;
  /** Debounce: while a task of this action and key waits, return it instead of adding one. */
  onceEvery?: Duration;
  /** Tasks with the same partition key run one at a time per group, in publish order. */
  partitionKey?: string;
}

export interface SubOptions {
  /** Credit: how many of these tasks run here at once (default 1). */
  concurrency?: number;
  /** Named queue to compete in (default: the service name). */
  group?: string;
  /** See every task without the hub waiting for this service (001's service that never picks up). */
  observe?: boolean;
  /** The group stays subscribed while no worker is connected: tasks wait in its queue. */
  durable?: boolean;
}

export interface TaskError {
  reason: string;
  message: string;
  type?: string;
  [key: string]: Json | undefined;
}

/** The hub's view of a task (docs/protocol.md, "Task view"). */
export interface TaskView {
  id: string;
  action: string;
  state: 'init' | 'start' | 'success' | 'fail' | 'end';
  publisher: string;
  created_at: number;
  started_at: number | null;
  ended_at: number | null;
  options: Record<string, Json>;
  updates: number;
  last_update: Json;
  result: Json;
  error: TaskError | null;
  deliveries: { group: string; state: string; attempt: number; tries: number }[];
}

/** A task event as `watch` delivers it. */
export interface TaskEvent {
  op: 'event';
  task: string;
  action: string;
  type: string;
  state: string;
  at: number;
  data?: Json;
  group?: string;
  service?: string;
  watched: true;
}

/** One delivery of a task to a worker (what a `sub` handler gets). */
export declare class Task<P = any> {
  readonly id: string;
  readonly action: string;
  readonly attempt: number;
  readonly group: string;
  readonly publisher: string;
  /** Epoch seconds. */
  readonly createdAt: number;
  readonly observe: boolean;
  /** The previous step's result, in a chain. */
  readonly previousResult: any;
  /** The latest update another service sent. */
  readonly lastUpdate: any;
  /** Why the hub took the task away ('timeout', 'cancelled', 'start_timeout', 'pickup_window', 'closed'), or null. */
  readonly revoked: string | null;
  /** Another service returned a result. */
  readonly succeeded: boolean;
  /** Aborted when the delivery is revoked: stop working. */
  readonly signal: AbortSignal;
  pickup(): Promise<void>;
  start(): Promise<void>;
  getPayload(): Promise<P>;
  update(data: any): Promise<void>;
  success(result?: any): Promise<void>;
  drop(): Promise<void>;
  getLastUpdate(): any;
  on(event: 'update' | 'success' | 'fail' | 'end', cb: (data: any, task: this) => unknown): this;
  on(event: 'revoke', cb: (reason: string, task: this) => unknown): this;
  off(event: string, cb: (...args: any[]) => unknown): this;
}

/** A published task: its id once accepted, its events, its result. */
export declare class Handle<R = any> {
  readonly action: string;
  /** Null until the hub accepted the task. */
  readonly id: string | null;
  /** Only moves forward: init, start, then one final state (an older view read after a reconnect does not take it back). */
  readonly state: 'init' | 'start' | 'success' | 'fail' | 'end';
  readonly lastUpdate: any;
  readonly updates: number;
  /** A worker started it. */
  readonly started: boolean;
  /** No worker subscribed to the action when the hub stored it (it waits until one does). */
  readonly pooled: boolean;
  readonly result: R | null;
  readonly error: TaskError | null;
  /** Ended, refused, or lost with the connection. */
  readonly done: boolean;
  /** Listen (chainable). A listener added late is called at once for 'update' (the latest), 'start' and the final event. */
  on(event: 'update' | 'start' | 'retry' | 'drop' | 'step' | 'end', cb: (data: any, handle: this) => unknown): this;
  on(event: 'success', cb: (result: R, handle: this) => unknown): this;
  on(event: 'fail', cb: (error: TaskError, handle: this) => unknown): this;
  off(event: string, cb: (...args: any[]) => unknown): this;
  getLastUpdate(): any;
  /** The task id once the hub has stored the task. */
  accepted(): Promise<string>;
  /** The result; rejects with TaskFailed, TaskTimeout, TaskCancelled, NoResult, ConnectionClosed or the hub's refusal. */
  getResult(): Promise<R>;
  /** The result, or `valueIfError` instead of any error. */
  getResult<D>(valueIfError: D): Promise<R | D>;
  /** The error getResult() rejects with, once done without a result. */
  exception(): TaskHubError;
  cancel(): Promise<void>;
}

/** A subscription; `await` it (or its `ready`) to know the hub accepted it. */
export declare class Subscription implements PromiseLike<void> {
  readonly action: string;
  readonly group: string | null;
  readonly concurrency: number;
  readonly observe: boolean;
  readonly durable: boolean;
  readonly ready: Promise<void>;
  then<A = void, B = never>(
    onfulfilled?: ((value: void) => A | PromiseLike<A>) | null,
    onrejected?: ((reason: any) => B | PromiseLike<B>) | null,
  ): Promise<A | B>;
}

/** Task events of the actions matching a pattern: an async iterator, or `.on('event', cb)`. */
export declare class Watch implements AsyncIterableIterator<TaskEvent> {
  readonly pattern: string;
  readonly closed: boolean;
  started(): Promise<this>;
  on(event: 'event', cb: (event: TaskEvent) => unknown): this;
  next(): Promise<IteratorResult<TaskEvent>>;
  return(): Promise<IteratorResult<TaskEvent>>;
  [Symbol.asyncIterator](): this;
  close(): Promise<void>;
}

/** A chain or group step: [action, payload, options?] or {action, payload, options}. */
export type Step = [string, any?, PubOptions?] | { action: string; payload?: any; options?: PubOptions };

export declare class Client {
  constructor(url?: string | string[], options?: ClientOptions);
  /** Seed 004's form: new Client({ url, clientName, key }). */
  constructor(options: ClientOptions & { url?: string | string[]; clientName?: string });
  readonly name: string;
  readonly connected: boolean;
  /** The hub's welcome message (hub, connection, service, max_frame). */
  readonly welcome: Record<string, Json>;
  connect(): Promise<this>;
  /** Take no new tasks, let running handlers finish (grace ms, default 10000), then close. */
  close(options?: { grace?: number }): Promise<void>;
  on(event: 'connect', cb: (welcome: Record<string, Json>) => unknown): this;
  on(event: 'disconnect', cb: (error: TaskHubError | null) => unknown): this;
  on(event: 'close', cb: () => unknown): this;
  once(event: 'connect' | 'disconnect' | 'close', cb: (...args: any[]) => unknown): this;
  off(event: 'connect' | 'disconnect' | 'close', cb: (...args: any[]) => unknown): this;

  sub<P = any>(action: string, handler: (task: Task<P>) => unknown, options?: SubOptions): Subscription;
  unsub(action: string): Promise<void>;
  /** The third argument: the end timeout in ms, or options. */
  pub<R = any>(action: string, payload?: any, options?: number | PubOptions): Handle<R>;
  /** Publish a list of tasks: each item [action, payload?, timeoutOrOptions?]; their handles, in order. */
  pubMany<R = any>(items: Iterable<[string, any?, (number | PubOptions)?] | { action: string; payload?: any; options?: number | PubOptions }>): Handle<R>[];
  chain<R = any>(steps: Step[], options?: { mergeInput?: boolean }): Handle<R>;
  group<R = any[]>(steps: Step[]): Handle<R>;
  get(taskId: string): Promise<TaskView>;
  payload(taskId: string): Promise<any>;
  cancel(taskId: string): Promise<void>;

  subscribe(topic: string, handler: (data: any, topic: string, from: string) => unknown): Promise<void>;
  unsubscribe(topic: string): Promise<void>;
  /** Broadcast to every other connection subscribed to a matching topic; resolves with how many. */
  emit(topic: string, data?: any): Promise<number>;
  watch(pattern: string): Watch;

  schedule(name: string, cron: string, action: string, payload?: any,
    options?: PubOptions & { timezone?: string }): Promise<Record<string, Json>>;
  schedules(): Promise<Record<string, Json>[]>;
  unschedule(name: string): Promise<Record<string, Json>>;
  queues(): Promise<{ action: string; group: string; durable: boolean; workers: number; waiting: number; in_flight: number }[]>;
  purge(action: string, group: string, options?: { forget?: boolean }): Promise<number>;
  deadLetters(action?: string | null): Promise<Record<string, Json>[]>;
  deadLetter(taskId: string): Promise<Record<string, Json>>;
  requeue(taskId: string): Promise<string>;
}

/** Seconds from milliseconds or an interval string ('7 days'); throws InvalidOption. */
export declare function toSeconds(value: Duration, option: string): number;
export declare function fromWire(body: { code?: string; message?: string; details?: Record<string, unknown> }): TaskHubError;

export declare class TaskHubError extends Error {
  static readonly code: string;
  readonly code: string;
  readonly details: Record<string, any>;
  constructor(message?: string, details?: Record<string, any>);
}
export declare class ProtocolError extends TaskHubError {}
export declare class FrameTooLarge extends ProtocolError {}
export declare class UnknownOperation extends ProtocolError {}
export declare class InvalidAction extends TaskHubError {}
export declare class InvalidOption extends TaskHubError {}
export declare class AuthenticationFailed extends TaskHubError {}
export declare class PermissionDenied extends TaskHubError {}
export declare class TooManyConnections extends TaskHubError {}
export declare class TaskNotFound extends TaskHubError {}
export declare class StaleAttempt extends TaskHubError {}
export declare class NotHolding extends TaskHubError {}
export declare class TaskFailed extends TaskHubError {
  /** 'error', 'timeout', 'start_timeout', 'cancelled', 'attempts', 'purged', ... */
  readonly reason: string;
  /** The handler's error type (its class name). */
  readonly errorType: string;
  readonly taskId: string;
  constructor(message?: string, info?: { reason?: string; errorType?: string; taskId?: string });
}
export declare class TaskTimeout extends TaskFailed {}
export declare class TaskCancelled extends TaskFailed {}
export declare class NoResult extends TaskHubError {}
export declare class ConnectionClosed extends TaskHubError {}
export declare class StoreUnavailable extends TaskHubError {}
export declare class StoreFenced extends StoreUnavailable {}
/** A partition no hub leads right now; the client sent the request again first (5 times). */
export declare class PartitionUnavailable extends StoreUnavailable {}
