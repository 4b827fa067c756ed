'use strict';
// Durations as people write them, in the grammar of src/taskhub/intervals.py (docs/scheduling.md):
// '7 days', '1h30m', '2 weeks, 3 days', '1 hour and 30 minutes', 'PT1H30M', 'P7D'.
// Numbers are MILLISECONDS in this client (the Node convention, and the seeds' `1000 * 60 * 30`).
const { InvalidOption } = require('./errors.cjs');

const UNITS = new Map();
for (const [names, seconds] of [
  [['ms', 'msec', 'msecs', 'millisecond', 'milliseconds'], 0.001],
  [['s', 'sec', 'secs', 'second', 'seconds'], 1],
  [['m', 'min', 'mins', 'minute', 'minutes'], 60],
  [['h', 'hr', 'hrs', 'hour', 'hours'], 3600],
  [['d', 'day', 'days'], 86400],
  [['w', 'wk', 'wks', 'week', 'weeks'], 604800],
]) for (const n of names) UNITS.set(n, seconds);
const CALENDAR = new Set(['mo', 'month', 'months', 'y', 'yr', 'yrs', 'year', 'years']);
const NUMBER = '\\d+(?:\\.\\d+)?|\\.\\d+';
const PART = new RegExp(`\\s*(${NUMBER})\\s*([a-zA-Z]+)\\s*(?:,|\\band\\b)?`, 'y');
const ISO = new RegExp(
  `^P(?:(${NUMBER})W)?(?:(${NUMBER})D)?(?:T(?:(${NUMBER})H)?(?:(${NUMBER})M)?(?:(${NUMBER})S)?)?$`, 'i');
const MAX_SECONDS = 1e12;

function checked(seconds, original, option) {
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new InvalidOption(`${option}: ${JSON.stringify(original)} must be a finite duration >= 0`, { option });
  }
  if (seconds > MAX_SECONDS) {
    throw new InvalidOption(`${option}: ${JSON.stringify(original)} is longer than ${MAX_SECONDS} seconds`, { option });
  }
  return seconds;
}

/**
 * Seconds (as the wire wants them) from milliseconds (a number) or a duration string.
 * `option` names the setting in the error message.
 */
function toSeconds(value, option) {
  if (typeof value === 'number') return checked(value / 1000, value, option);
  if (typeof value !== 'string') {
    throw new InvalidOption(
      `${option}: expected milliseconds or a duration such as '7 days', got ${value === null ? 'null' : typeof value}`,
      { option });
  }
  const text = value.trim();
  if (!text) throw new InvalidOption(`${option}: empty duration ${JSON.stringify(value)}`, { option });
  if (new RegExp(`^(?:${NUMBER})$`).test(text)) {
    // Numbers are milliseconds here but seconds in TaskHub's other surfaces: a string without
    // a unit is ambiguous, so it is refused rather than guessed.
    throw new InvalidOption(
      `${option}: ${JSON.stringify(value)} has no unit; pass milliseconds as a number or write e.g. '90s'`,
      { option });
  }
  if (text[0] === 'P' || text[0] === 'p') {
    const m = ISO.exec(text);
    if (!m || !m.slice(1).some(Boolean) || /T$/i.test(text)) {
      throw new InvalidOption(
        `${option}: ${JSON.stringify(value)} is not an ISO-8601 duration such as 'PT1H30M' or 'P7D'`, { option });
    }
    const k = [604800, 86400, 3600, 60, 1];
    return checked(m.slice(1).reduce((sum, v, i) => sum + (v ? Number(v) * k[i] : 0), 0), value, option);
  }
  let total = 0;
  let pos = 0;
  while (pos < text.length) {
    PART.lastIndex = pos;
    const m = PART.exec(text);
    if (!m) {
      throw new InvalidOption(
        `${option}: cannot read ${JSON.stringify(text.slice(pos).trim())} in ${JSON.stringify(value)}; ` +
          "write e.g. '90 seconds', '1h30m', '7 days' or 'PT1H30M'", { option });
    }
    const unit = m[2].toLowerCase();
    if (CALENDAR.has(unit)) {
      throw new InvalidOption(
        `${option}: ${JSON.stringify(value)} uses '${m[2]}', which has no fixed length; use days or weeks, or a cron schedule`,
        { option });
    }
    const seconds = UNITS.get(unit);
    if (seconds === undefined) {
      throw new InvalidOption(
        `${option}: unknown unit '${m[2]}' in ${JSON.stringify(value)}; known units: ms, s, m, h, d, w (and their long forms)`,
        { option });
    }
    total += Number(m[1]) * seconds;
    pos = PART.lastIndex;
  }
  return checked(total, value, option);
}

module.exports = { toSeconds };
