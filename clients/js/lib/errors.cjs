'use strict';
// One Error class per wire error code, named like the Python client's (src/taskhub/errors.py).

class TaskHubError extends Error {
  constructor(message, details) {
    super(message || new.target.code);
    this.name = new.target.name;
    this.code = new.target.code;
    this.details = details || {};
  }
}
TaskHubError.code = 'error';

function define(name, parent, code) {
  const cls = { [name]: class extends parent {} }[name];
  cls.code = code;
  return cls;
}

const ProtocolError = define('ProtocolError', TaskHubError, 'bad_message');
const FrameTooLarge = define('FrameTooLarge', ProtocolError, 'frame_too_large');
const UnknownOperation = define('UnknownOperation', ProtocolError, 'unknown_op');
const InvalidAction = define('InvalidAction', TaskHubError, 'invalid_action');
const InvalidOption = define('InvalidOption', TaskHubError, 'invalid_option');
const AuthenticationFailed = define('AuthenticationFailed', TaskHubError, 'auth_failed');
const PermissionDenied = define('PermissionDenied', TaskHubError, 'forbidden');
const TooManyConnections = define('TooManyConnections', TaskHubError, 'too_many_connections');
const TaskNotFound = define('TaskNotFound', TaskHubError, 'task_not_found');
const StaleAttempt = define('StaleAttempt', TaskHubError, 'stale_attempt');
const NotHolding = define('NotHolding', TaskHubError, 'not_holding');
const NoResult = define('NoResult', TaskHubError, 'no_result');
const ConnectionClosed = define('ConnectionClosed', TaskHubError, 'connection_closed');
const StoreUnavailable = define('StoreUnavailable', TaskHubError, 'store_unavailable');
const StoreFenced = define('StoreFenced', StoreUnavailable, 'store_fenced');
// A partition no hub leads right now (the client sends the request again first: connection.cjs).
const PartitionUnavailable = define('PartitionUnavailable', StoreUnavailable, 'partition_unavailable');

/** The task failed: a handler threw, it ran out of attempts, or it was cancelled. */
class TaskFailed extends TaskHubError {
  constructor(message, { reason = 'error', errorType = '', taskId = '' } = {}) {
    super(message, { reason, errorType, taskId });
    this.reason = reason;
    this.errorType = errorType;
    this.taskId = taskId;
  }
}
TaskFailed.code = 'task_failed';
const TaskTimeout = define('TaskTimeout', TaskFailed, 'task_timeout');
const TaskCancelled = define('TaskCancelled', TaskFailed, 'task_cancelled');

const classes = {
  TaskHubError, ProtocolError, FrameTooLarge, UnknownOperation, InvalidAction, InvalidOption,
  AuthenticationFailed, PermissionDenied, TooManyConnections, TaskNotFound, StaleAttempt,
  NotHolding, TaskFailed, TaskTimeout, TaskCancelled, NoResult, ConnectionClosed,
  StoreUnavailable, StoreFenced, PartitionUnavailable,
};
const byCode = new Map();
for (const cls of Object.values(classes)) if (!byCode.has(cls.code)) byCode.set(cls.code, cls);

/** The error a hub sent ({code, message, details}) as the most specific class for its code. */
function fromWire(body) {
  const cls = byCode.get(String(body.code || '')) || TaskHubError;
  const message = String(body.message || '');
  if (cls === TaskFailed || cls.prototype instanceof TaskFailed) return new cls(message);
  const err = new cls(message, body.details || {});
  if (!byCode.has(String(body.code || ''))) err.code = String(body.code || 'error');
  return err;
}

module.exports = { ...classes, fromWire };
