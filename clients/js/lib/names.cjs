'use strict';
// Action and topic names, checked before sending as the Python client does (src/taskhub/names.py):
// a bad name is refused at once with a message naming the bad character.
const { InvalidAction } = require('./errors.cjs');

const MAX_NAME = 255;
const WORD = /^[A-Za-z0-9_.-]$/;

function badChar(text, extra) {
  for (const ch of text) if (!WORD.test(ch) && !extra.includes(ch)) return ch;
  return null;
}

function checkWord(word, whole) {
  if (!word) throw new InvalidAction(`action '${whole}' has an empty noun or verb`, { name: whole });
  const bad = badChar(word, '');
  if (bad !== null) {
    throw new InvalidAction(
      `action '${whole}' contains '${bad}'; nouns and verbs use A-Z a-z 0-9 _ . -`,
      { name: whole, character: bad });
  }
}

// Actions already checked: a publisher sends the same few actions again and again.
const valid = new Set();

/** `<noun>:<verb>` or `<noun>/<sub.noun>:<verb>`; returns the action or throws InvalidAction. */
function validateAction(action) {
  if (valid.has(action)) return action;
  checkAction(action);
  if (valid.size >= 4096) valid.clear();
  valid.add(action);
  return action;
}

function checkAction(action) {
  if (typeof action !== 'string') {
    throw new InvalidAction(`action must be a string, got ${action === null ? 'null' : typeof action}`);
  }
  if (!action || action.length > MAX_NAME) {
    throw new InvalidAction(`action must be 1 to ${MAX_NAME} characters`, { name: action });
  }
  const colon = action.indexOf(':');
  if (colon < 0) throw new InvalidAction(`action '${action}' has no ':verb' (use <noun>:<verb>)`, { name: action });
  const noun = action.slice(0, colon);
  const verb = action.slice(colon + 1);
  if (verb.includes(':')) throw new InvalidAction(`action '${action}' contains ':' twice`, { name: action });
  const parts = noun.split('/');
  if (parts.length > 2) throw new InvalidAction(`action '${action}' contains '/' twice`, { name: action });
  for (const p of parts) checkWord(p, action);
  checkWord(verb, action);
  return action;
}

const SPLIT = /[/:.]/;

/** A topic (broadcast events), or with `pattern` a subscription pattern (`*` segment, last `>`). */
function validateTopic(topic, pattern = false) {
  if (typeof topic !== 'string') {
    throw new InvalidAction(`topic must be a string, got ${topic === null ? 'null' : typeof topic}`);
  }
  if (!topic || topic.length > MAX_NAME) {
    throw new InvalidAction(`topic must be 1 to ${MAX_NAME} characters`, { name: topic });
  }
  const bad = badChar(topic, pattern ? '/:*>' : '/:');
  if (bad !== null) {
    throw new InvalidAction(
      `topic '${topic}' contains '${bad}'; topics use A-Z a-z 0-9 _ . - / :` +
        (pattern ? ' and the wildcards * and >' : ''),
      { name: topic, character: bad });
  }
  const segments = topic.split(SPLIT);
  segments.forEach((seg, i) => {
    if (seg === '') throw new InvalidAction(`topic '${topic}' has an empty segment`, { name: topic });
    if (pattern && (seg.includes('*') || seg.includes('>'))) {
      if (seg === '*' || (seg === '>' && i === segments.length - 1)) return;
      throw new InvalidAction(
        `topic pattern '${topic}': '*' must be a whole segment and '>' the last one`, { name: topic });
    }
  });
  return topic;
}

const patterns = new Map();

/** Whether `topic` matches `pattern` (as the hub's router decides, NATS-like). */
function topicMatches(pattern, topic) {
  if (pattern === topic) return true;
  let re = patterns.get(pattern);
  if (re === undefined) {
    let src = '';
    let pos = 0;
    const withEnd = pattern + '/';
    for (let i = 0; i < withEnd.length; i++) {
      if (!'/:.'.includes(withEnd[i])) continue;
      const seg = pattern.slice(pos, i);
      const sep = i < pattern.length ? '\\' + pattern[i] : '';
      if (seg === '>') { src += '[^]+'; break; }
      src += (seg === '*' ? '[^/:.]+' : seg.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&')) + sep;
      pos = i + 1;
    }
    re = new RegExp('^' + src + '$');
    if (patterns.size > 4096) patterns.clear();
    patterns.set(pattern, re);
  }
  return re.test(topic);
}

module.exports = { validateAction, validateTopic, topicMatches };
