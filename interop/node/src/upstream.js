'use strict';
// The one connection to the exchange: both subscriptions opened at start-up and held (rules C2,
// C3), the connector's view of the account, its freshness figures (C30, C32, C33), the watchdog
// for a hung exchange (C31), and reconnection with backoff when the exchange fails (C9).

const { EventEmitter } = require('node:events');
const grpc = require('@grpc/grpc-js');
const log = require('./log');
const { metrics } = require('./metrics');
const { badAccountField, badPositionField } = require('./decimal');

const STALE_AFTER_MS = 5000; // the data-age and lag bound of C30
const LIVENESS_AFTER_MS = 1000; // silence after which the exchange is asked (C33)
const LIVENESS_DEADLINE_MS = 2000;
const ATTEMPT_DEADLINE_MS = 5000; // a connection attempt that is not live by then is retried
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 2000;
const STABLE_AFTER_MS = 5000; // up this long, the backoff starts again from the first step
const WATCH_EVERY_MS = 250;

class Upstream extends EventEmitter {
  constructor(address, hub, tracker, { token = '' } = {}) {
    super();
    const { upstreamClientConstructor, accountEncoder } = require('./contract');
    const Client = upstreamClientConstructor();
    this.encodeAccount = accountEncoder();
    this.client = new Client(address, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      'grpc.initial_reconnect_backoff_ms': BACKOFF_FIRST_MS,
      'grpc.max_reconnect_backoff_ms': BACKOFF_MAX_MS,
    });
    this.address = address;
    this.hub = hub;
    this.tracker = tracker;
    this.token = token;
    this.generation = 0;
    this.state = 'connecting'; // connecting | up | down | stopped
    this.account = null;
    this.accountRaw = null;
    this.accountProblem = null; // why the view cannot be vouched for (C12)
    this.lastSignOfLife = 0;
    this.minOffsetMs = null; // the most punctual read of this connection: read time - stamp
    this.newestStampNs = -1n; // the newest account stamp of this connection, to the nanosecond
    this.lagMs = 0;
    this.backoffMs = BACKOFF_FIRST_MS;
    this.upSince = 0;
    this.lossReason = 'the upstream exchange is not connected yet';
    this.livenessInFlight = false;
    this.calls = [];
    this.watchdog = setInterval(() => this.watch(), WATCH_EVERY_MS);
  }

  metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  start() {
    this.connect();
  }

  dataAgeMs(now = Date.now()) {
    return this.lastSignOfLife === 0 ? 0 : Math.max(0, now - this.lastSignOfLife);
  }

  // Why the view may not be served as current, or null (C9, C12, C30).
  staleness(now = Date.now()) {
    if (this.state !== 'up') return this.lossReason;
    const age = this.dataAgeMs(now);
    if (age > STALE_AFTER_MS) {
      return `the connector's view is stale: no sign of life from the upstream exchange for ${(age / 1000).toFixed(1)} s (data age bound ${STALE_AFTER_MS / 1000} s)`;
    }
    if (this.lagMs > STALE_AFTER_MS) {
      return `the connector's view is stale: the upstream exchange's updates arrive ${(this.lagMs / 1000).toFixed(1)} s late (upstream lag bound ${STALE_AFTER_MS / 1000} s)`;
    }
    return null;
  }

  // The upstream lag of the latest account update, while updates are flowing (0 otherwise).
  recentLagMs(now = Date.now()) {
    return this.state === 'up' && now - (this.lastAccountAt || 0) < 1000 ? this.lagMs : 0;
  }

  serving() {
    return this.staleness() === null;
  }

  connect() {
    if (this.state === 'stopped') return;
    const generation = ++this.generation;
    const current = () => generation === this.generation && this.state !== 'stopped';
    const waiting = new Set(['account', 'positions', 'seed']);
    const started = Date.now();
    const ready = (what) => {
      if (!current() || !waiting.delete(what) || waiting.size > 0) return;
      this.becameUp(started);
    };
    const failed = (why) => {
      if (current()) this.lost(why);
    };

    const account = this.tracker.track(this.client.SubscribeAccount({}, this.metadata()));
    const positions = this.tracker.track(this.client.SubscribePositions({ symbol: '' }, this.metadata()));
    this.calls = [account, positions];
    for (const [topic, call] of [['account', account], ['positions', positions]]) {
      call.on('metadata', () => ready(topic));
      call.on('data', (item) => {
        if (!current()) return;
        ready(topic); // an update also shows the subscription is live
        if (topic === 'account') this.onAccount(item);
        else this.onPosition(item);
      });
      call.on('error', (error) => failed(`${topic} stream: ${describe(error)}`));
      call.on('end', () => failed(`${topic} stream ended by the exchange`));
    }
    const seedSent = Date.now();
    this.client.GetAccount({}, this.metadata(), { deadline: Date.now() + ATTEMPT_DEADLINE_MS }, (error, answer) => {
      if (!current()) return;
      if (error) {
        failed(`GetAccount: ${describe(error)}`);
        return;
      }
      this.signOfLife();
      // an update read meanwhile is newer than this answer
      if (this.account === null || this.accountReadAt < seedSent) this.setAccount(answer, seedSent);
      ready('seed');
    });
    this.attemptTimer = setTimeout(() => {
      if (current() && this.state !== 'up') failed(`no answer within ${ATTEMPT_DEADLINE_MS / 1000} s`);
    }, ATTEMPT_DEADLINE_MS);
  }

  becameUp(started) {
    clearTimeout(this.attemptTimer);
    this.state = 'up';
    this.upSince = Date.now();
    this.signOfLife();
    metrics.upstreamConnections.set(1);
    log.info('upstream_connected', { upstream: this.address, took_ms: Date.now() - started });
    this.emit('change');
  }

  // The exchange failed: end every stream, say so, and try again with backoff (C9, C31).
  lost(why) {
    clearTimeout(this.attemptTimer);
    const wasUp = this.state === 'up';
    this.generation += 1; // events of the abandoned calls are ignored from now on
    for (const call of this.calls) call.cancel();
    this.calls = [];
    this.state = 'down';
    this.minOffsetMs = null;
    this.newestStampNs = -1n;
    this.lagMs = 0;
    metrics.upstreamConnections.set(0);
    const stale = why.startsWith("the connector's view is stale");
    this.lossReason = stale ? why : `the upstream exchange failed: ${why}`;
    if (wasUp) {
      log.error('upstream_lost', { upstream: this.address, reason: why });
      const ended = this.hub.endAll(grpc.status.UNAVAILABLE, this.lossReason, 'upstream lost');
      log.warning('not_serving', { reason: this.lossReason, streams_ended: ended });
      if (Date.now() - this.upSince > STABLE_AFTER_MS) this.backoffMs = BACKOFF_FIRST_MS;
    } else {
      log.warning('upstream_unavailable', { upstream: this.address, reason: why, retry_in_ms: this.backoffMs });
    }
    this.emit('change');
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.retryTimer = setTimeout(() => {
      metrics.upstreamReconnects.inc();
      this.connect();
    }, delay);
  }

  signOfLife() {
    this.lastSignOfLife = Date.now();
  }

  // The view: the decoded account and its encoding (served as it is by GetAccount).
  setAccount(account, readAt, raw) {
    this.account = account;
    this.accountRaw = raw || this.encodeAccount(account);
    this.accountReadAt = readAt;
    this.accountProblem = null;
  }

  onAccount({ raw, message }) {
    const now = Date.now();
    this.signOfLife();
    metrics.upstreamMessages.inc({ topic: 'account' });
    const bad = badAccountField(message);
    if (bad) {
      this.refuse('account', bad);
      this.accountProblem = `the exchange sent an account the connector cannot vouch for (${bad.field} ${JSON.stringify(bad.value)} is not a decimal string)`;
      return;
    }
    this.measureLag(message, now);
    this.lastAccountAt = now;
    this.setAccount(message, now, raw);
    this.hub.publish('account', raw, '', now);
  }

  onPosition({ raw, message }) {
    const now = Date.now();
    this.signOfLife();
    metrics.upstreamMessages.inc({ topic: 'positions' });
    const bad = badPositionField(message);
    if (bad) {
      this.refuse('positions', bad);
      return;
    }
    this.hub.publish('positions', raw, message.symbol, now);
  }

  refuse(topic, bad) {
    metrics.invalid.inc({ topic });
    log.error('upstream_invalid_data', {
      topic,
      field: bad.field,
      value: bad.value,
      reason: `${bad.field} ${JSON.stringify(bad.value)} is not a decimal string; not forwarded`,
    });
  }

  // The upstream lag of C30: this read's delay by the exchange's stamp, less the most punctual one.
  // Only a stamp newer than every one before on this connection counts: an account sent again
  // unchanged keeps the stamp of its last change, which says nothing about how late the read is.
  measureLag(account, now) {
    const stamp = account.updated_at;
    if (!stamp) return;
    const stampMs = Number(stamp.seconds) * 1000 + Math.floor(Number(stamp.nanos || 0) / 1e6);
    if (!Number.isFinite(stampMs) || stampMs <= 0) return;
    const stampNs = BigInt(String(stamp.seconds)) * 1000000000n + BigInt(Number(stamp.nanos || 0));
    if (stampNs <= this.newestStampNs) return;
    this.newestStampNs = stampNs;
    const offset = now - stampMs;
    if (this.minOffsetMs === null || offset < this.minOffsetMs) this.minOffsetMs = offset;
    this.lagMs = offset - this.minOffsetMs;
  }

  // Liveness reads in a quiet market; the hung exchange is given up on past the data-age bound.
  watch() {
    if (this.state !== 'up') return;
    const now = Date.now();
    const age = this.dataAgeMs(now);
    metrics.dataAge.set(age / 1000);
    if (age > STALE_AFTER_MS) {
      this.lost(this.staleness(now));
      return;
    }
    if (age >= LIVENESS_AFTER_MS && !this.livenessInFlight) {
      this.livenessInFlight = true;
      const generation = this.generation;
      const deadline = Date.now() + LIVENESS_DEADLINE_MS;
      this.client.GetAccount({}, this.metadata(), { deadline }, (error) => {
        this.livenessInFlight = false;
        if (!error && generation === this.generation) this.signOfLife();
      });
    }
  }

  // GetPositions from the exchange (the caller shares calls in flight).
  getPositions(symbol, deadlineMs) {
    return new Promise((resolve, reject) => {
      this.client.GetPositions({ symbol }, this.metadata(), { deadline: Date.now() + deadlineMs }, (error, answer) => {
        if (error) reject(error);
        else {
          this.signOfLife();
          resolve(answer);
        }
      });
    });
  }

  stop() {
    this.state = 'stopped';
    this.generation += 1;
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    clearTimeout(this.attemptTimer);
    for (const call of this.calls) call.cancel();
    this.calls = [];
    this.client.close();
    metrics.upstreamConnections.set(0);
  }
}

function describe(error) {
  if (error && typeof error.code === 'number') {
    return `${grpc.status[error.code] || error.code}: ${error.details || error.message}`;
  }
  return String(error && error.message ? error.message : error);
}

module.exports = { Upstream, describe, STALE_AFTER_MS };
