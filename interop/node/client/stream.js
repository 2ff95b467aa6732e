// A server stream of the ExchangeService that survives breaks: when a subscription ends (an error
// status, the server closing it, the server going away) it is reported, and after an exponential,
// jittered backoff the stream subscribes again by itself. The owner hears of it through callbacks:
// onSubscribed once (the first subscription established), onUpdate per valid message, onBreak per
// ended subscription or failed attempt, and onReconnected once per break, before any message of the
// new subscription. Messages whose money fields are not decimal strings never reach onUpdate.
'use strict';

const grpc = require('@grpc/grpc-js');

const DECIMAL = /^-?[0-9]+(\.[0-9]+)?$/;
// A subscription that delivered a message, or stayed up this long, starts the backoff afresh.
const STABLE_AFTER_MS = 1000;
const MULTIPLIER = 2;
const JITTER = 0.2;

function statusName(code) {
  return Object.entries(grpc.status).find(([, value]) => value === code)?.[0] || String(code);
}

function contractProblem(message, fields) {
  for (const field of fields) {
    if (!DECIMAL.test(String(message[field] || ''))) return `${field} ${JSON.stringify(message[field])} is not a decimal string`;
  }
  return null;
}

// Milliseconds before attempt `failures` (1 = the first retry after a break).
function backoffMs(policy, failures) {
  const base = Math.min(policy.maxMs, policy.initialMs * MULTIPLIER ** Math.max(failures - 1, 0));
  return base * (1 + (Math.random() * 2 - 1) * JITTER);
}

class ResubscribingStream {
  // open(waitForReady) starts one subscription call; money lists the fields that must be decimals.
  constructor({ name, open, money, policy, log, onSubscribed, onUpdate, onBreak, onReconnected }) {
    Object.assign(this, { name, open, money, policy, log, onSubscribed, onUpdate, onBreak, onReconnected });
    this.call = null;
    this.timer = null;
    this.stopped = false;
    this.everSubscribed = false;
    this.broken = false; // a break happened and the owner has not yet been told of the new subscription
    this.failures = 0; // consecutive failed subscriptions since the last stable one
    this.subscribe(false);
  }

  subscribe(afterBreak) {
    this.timer = null;
    // A resubscription waits for the channel to be ready again rather than failing at once.
    const call = this.open(afterBreak);
    this.call = call;
    const state = { up: false, upAt: 0, delivered: 0, ended: false };
    const current = () => !this.stopped && this.call === call;
    const established = () => {
      if (state.up || !current()) return;
      state.up = true;
      state.upAt = Date.now();
      if (!this.everSubscribed) {
        this.everSubscribed = true;
        this.onSubscribed();
      } else if (this.broken) {
        this.broken = false;
        this.log(`${this.name} stream resubscribed after ${this.failures} failed subscription(s)`);
        this.onReconnected();
      }
    };
    const ended = (code, details) => {
      if (state.ended || !current()) return;
      state.ended = true;
      const stable = state.up && (state.delivered > 0 || Date.now() - state.upAt >= STABLE_AFTER_MS);
      this.failures = stable ? 1 : this.failures + 1;
      this.broken = this.broken || this.everSubscribed;
      const delay = backoffMs(this.policy, this.failures);
      const what = state.up ? 'broke' : 'could not subscribe';
      const message = `${this.name} stream ${what}: ${code}: ${details}; resubscribing in ${Math.round(delay)} ms`;
      this.log(message);
      this.onBreak({ code, details, message, attempt: this.failures, backoff_ms: Math.round(delay * 1000) / 1000 });
      this.timer = setTimeout(() => {
        if (!this.stopped) this.subscribe(true);
      }, delay);
    };
    call.on('metadata', established);
    call.on('data', (message) => {
      if (!current()) return;
      established(); // a server may send its first message without headers of their own
      const problem = contractProblem(message, this.money);
      if (problem) {
        this.log(`${this.name}: skipped a message that breaks the contract: ${problem}`);
        return;
      }
      state.delivered += 1;
      this.onUpdate(message);
    });
    call.on('error', (err) => ended(statusName(err.code), err.details || ''));
    call.on('status', (status) => {
      if (status.code === grpc.status.OK) ended('OK', 'the server ended the stream');
    });
  }

  // Nothing of this stream reaches the owner once this returns; the call in flight is cancelled.
  stop() {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const call = this.call;
    if (call === null) return;
    call.cancel();
    // grpc-js 1.14 makes the real call a moment after routing it, without checking for a cancel in
    // between; a call cancelled in that moment still reaches the server. Once it has been made (its
    // promise chain has run), a second cancel ends it there too.
    setImmediate(() => call.cancel());
  }
}

module.exports = { ResubscribingStream, statusName };
