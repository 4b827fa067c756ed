'use strict';
const errors = require('./errors.cjs');
const { Client, Subscription, Watch } = require('./client.cjs');
const { Task, Handle } = require('./task.cjs');
const { toSeconds } = require('./intervals.cjs');

module.exports = { Client, Subscription, Watch, Task, Handle, toSeconds, ...errors };
