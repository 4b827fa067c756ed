'use strict';
// Payloads, updates, results, event data and options are JSON data, as in the Python client
// (docs/decisions.md, "Payloads are plain JSON"): JSON.stringify would silently write NaN and
// Infinity as null, a Date as a string, a Map or Set as {}, and drop functions. Such values
// are refused where they are sent, naming the field and path and how to convert them.

function describe(value) {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  const proto = Object.getPrototypeOf(value);
  return proto && proto.constructor && proto.constructor.name ? proto.constructor.name : 'object';
}

const HINTS = {
  Date: 'send value.toISOString() (or value.getTime())',
  Map: 'send Object.fromEntries(value)',
  Set: 'send [...value]',
  Buffer: "send value.toString('base64')",
  bigint: 'send value.toString() (or Number(value) if it fits)',
  undefined: 'send null',
  number: 'send null or a string',
};

function refuse(where, path, value, what) {
  const hint = HINTS[what] || 'convert it to plain data (objects, arrays, strings, finite numbers, booleans, null)';
  return new TypeError(`${where}: ${path} is ${what === 'number' ? String(value) : `a ${what}`}, which JSON cannot carry: ${hint}; it was not sent`);
}

/** Throws a TypeError naming `where` and the path of the first value that is not plain JSON. */
function checkPlain(value, where, path) {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw refuse(where, path, value, 'number');
      return;
    case 'object':
      break;
    default:
      throw refuse(where, path, value, typeof value);
  }
  if (value === null) return;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      // A hole or undefined would become null: refused like any other change.
      if (value[i] === undefined) throw refuse(where, `${path}[${i}]`, undefined, 'undefined');
      checkPlain(value[i], where, `${path}[${i}]`);
    }
    return;
  }
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) throw refuse(where, path, value, describe(value));
  for (const key of Object.keys(value)) {
    const v = value[key];
    // A property set to undefined is absent, as JSON.stringify and every JS API read it.
    if (v !== undefined) checkPlain(v, where, path ? `${path}.${key}` : key);
  }
}

module.exports = { checkPlain };
