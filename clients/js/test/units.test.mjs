// Durations as the client reads them (the grammar of docs/scheduling.md, numbers in ms).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { toSeconds, InvalidOption } from '../index.mjs';

it('reads numbers as milliseconds and strings with units', () => {
  assert.equal(toSeconds(1500, 'delay'), 1.5);
  assert.equal(toSeconds('7 days', 'delay'), 604800);
  assert.equal(toSeconds('1h30m', 'delay'), 5400);
  assert.equal(toSeconds('1 hour and 30 minutes', 'delay'), 5400);
  assert.equal(toSeconds('2 weeks, 3 days', 'delay'), 1468800);
  assert.equal(toSeconds('PT1H30M', 'delay'), 5400);
  assert.equal(toSeconds('P1DT12H', 'delay'), 129600);
  assert.equal(toSeconds('250ms', 'delay'), 0.25);
});

it('refuses what it cannot read, naming the option', () => {
  for (const [value, why] of [
    ['3 months', /no fixed length/], ['90', /has no unit/], ['5 parsecs', /unknown unit 'parsecs'/],
    ['', /empty duration/], [-5, /finite duration >= 0/], ['P1Y', /ISO-8601/], [null, /expected milliseconds/],
  ]) {
    assert.throws(() => toSeconds(value, 'delay'), (e) => e instanceof InvalidOption && /^delay: /.test(e.message) && why.test(e.message), String(value));
  }
});
