'use strict';
// The fan-out: every update read upstream goes to each subscriber of its topic through a bounded
// queue of its own. A subscriber whose queue fills (1,024 updates), or whose oldest update has
// waited 1 s for its stream's transport, is dropped with RESOURCE_EXHAUSTED after an in-order
// prefix, so one slow client never stalls the others (rules C4, C13, C34).

const grpc = require('@grpc/grpc-js');
const log = require('./log');
const { metrics } = require('./metrics');

const QUEUE_LIMIT = 1024;
const LAG_LIMIT_MS = 1000;
// Writes handed to the stream whose completion is still awaited: a completed write is one HTTP/2
// flow control let through, so the age of the oldest pending one is how far the client trails.
const WRITE_WINDOW = 8;
const CHECK_EVERY_MS = 100;
// Its own stall (C40): a lag check this much later than its interval, while the process used less
// than a fifth of the gap's CPU, means the process stood still (SIGSTOP, a VM without CPU), not a
// slow reader. Updates queued before it look old; for one lag limit after it nobody is dropped for lag.
const STALL_AFTER_MS = 500;

class Subscriber {
  constructor(hub, topic, call, symbol) {
    this.hub = hub;
    this.topic = topic;
    this.call = call;
    this.symbol = symbol;
    this.peer = call.getPeer();
    this.queue = []; // [raw, readAt] not yet handed to the stream
    this.pending = []; // readAt of writes handed to the stream and not yet completed
    this.ended = false;
  }

  wants(symbol) {
    return this.topic === 'account' || this.symbol === '' || symbol === this.symbol;
  }

  offer(raw, readAt) {
    if (this.ended) return;
    this.queue.push([raw, readAt]);
    if (this.queue.length + this.pending.length > QUEUE_LIMIT) {
      this.drop(`${this.queue.length + this.pending.length} updates waiting (queue limit ${QUEUE_LIMIT})`);
      return;
    }
    this.pump();
  }

  pump() {
    while (!this.ended && this.queue.length > 0 && this.pending.length < WRITE_WINDOW) {
      const [raw, readAt] = this.queue.shift();
      this.pending.push(readAt);
      this.call.write(raw, () => {
        this.pending.shift();
        metrics.sent.inc({ topic: this.topic });
        this.pump();
      });
    }
  }

  oldestWaitMs(now) {
    const oldest = this.pending.length > 0 ? this.pending[0] : this.queue.length > 0 ? this.queue[0][1] : null;
    return oldest === null ? 0 : now - oldest;
  }

  drop(why) {
    if (this.ended) return;
    metrics.dropped.inc({ topic: this.topic });
    log.warning('subscriber_dropped', {
      topic: this.topic,
      peer: this.peer,
      symbol: this.symbol,
      queue_size: QUEUE_LIMIT,
      reason: why,
    });
    this.end(grpc.status.RESOURCE_EXHAUSTED, `subscriber fell too far behind and was dropped: ${why}; resynchronise with GetAccount/GetPositions`, 'dropped');
  }

  // End the stream with a status the client sees, after the updates already handed to it.
  end(code, details, reason) {
    if (this.ended) return;
    this.ended = true;
    this.queue = [];
    this.hub.remove(this, reason);
    this.call.emit('error', { code, details });
  }
}

// Overload (C38): while the upstream read trails the exchange by more than this, the laggiest
// quarter of the subscribers with updates waiting is shed every SHED_EVERY_MS, and new
// subscriptions are refused, so the read keeps in step instead of every subscriber drifting.
const OVERLOAD_LAG_MS = 500;
const SHED_EVERY_MS = 250;

class Hub {
  constructor(upstreamLagMs = () => 0) {
    this.subscribers = { account: new Set(), positions: new Set() };
    this.upstreamLagMs = upstreamLagMs;
    this.overloaded = false;
    this.lastCheck = Date.now();
    this.lastCpu = process.cpuUsage();
    this.excusedUntil = 0;
    this.lastShed = this.lastCheck;
    this.lastShedCpu = this.lastCpu;
    this.timer = setInterval(() => this.checkLag(), CHECK_EVERY_MS);
    this.timer.unref();
    this.shedTimer = setInterval(() => this.shed(), SHED_EVERY_MS);
    this.shedTimer.unref();
  }

  shed() {
    const now = Date.now();
    const cpu = process.cpuUsage();
    const stalled = this.stalled(now - this.lastShed, cpu, this.lastShedCpu, SHED_EVERY_MS);
    this.lastShed = now;
    this.lastShedCpu = cpu;
    // what the exchange sent during a stall of our own is read late: no overload, a backlog
    if (stalled || now < this.excusedUntil) {
      this.overloaded = false;
      return;
    }
    const lag = this.upstreamLagMs();
    this.overloaded = lag > OVERLOAD_LAG_MS;
    if (!this.overloaded) return;
    const all = [...this.subscribers.account, ...this.subscribers.positions];
    const behind = all.filter((s) => s.queue.length + s.pending.length > 0);
    behind.sort((a, b) => b.oldestWaitMs(now) - a.oldestWaitMs(now));
    const count = Math.min(behind.length, Math.ceil(all.length / 4));
    for (const subscriber of behind.slice(0, count)) {
      subscriber.drop(`the connector is overloaded: its upstream read trails by ${lag} ms (shed at ${OVERLOAD_LAG_MS} ms)`);
    }
  }

  add(topic, call, symbol) {
    const subscriber = new Subscriber(this, topic, call, symbol);
    this.subscribers[topic].add(subscriber);
    metrics.subscribers.set({ topic }, this.subscribers[topic].size);
    const gone = () => {
      if (subscriber.ended) return;
      subscriber.ended = true;
      this.remove(subscriber, 'client gone');
    };
    call.on('cancelled', gone);
    call.on('close', gone);
    log.info('subscriber_added', { topic, peer: subscriber.peer, symbol });
    return subscriber;
  }

  remove(subscriber, reason) {
    const set = this.subscribers[subscriber.topic];
    if (!set.delete(subscriber)) return;
    metrics.subscribers.set({ topic: subscriber.topic }, set.size);
    log.info('subscriber_removed', { topic: subscriber.topic, peer: subscriber.peer, reason });
  }

  publish(topic, raw, symbol, readAt) {
    for (const subscriber of this.subscribers[topic]) {
      if (subscriber.wants(symbol)) subscriber.offer(raw, readAt);
    }
  }

  // Whether a timer of `interval` ms that ticked `gap` ms after its last tick, while the process
  // used the CPU from `last` to `cpu`, shows a stall of the process's own; one excuses lag for one
  // lag limit. Each timer judges its own gap: after a stall the overdue ones fire in any order.
  stalled(gap, cpu, last, interval) {
    const cpuMs = (cpu.user - last.user + cpu.system - last.system) / 1000;
    if (gap <= interval + STALL_AFTER_MS || cpuMs >= gap / 5) return false;
    const now = Date.now();
    if (now >= this.excusedUntil) log.warning('loop_stalled', { stalled_ms: gap - interval, cpu_ms: Math.round(cpuMs) });
    this.excusedUntil = now + LAG_LIMIT_MS;
    return true;
  }

  checkLag() {
    const now = Date.now();
    const cpu = process.cpuUsage();
    const gap = now - this.lastCheck;
    const last = this.lastCpu;
    this.lastCheck = now;
    this.lastCpu = cpu;
    this.stalled(gap, cpu, last, CHECK_EVERY_MS);
    if (now < this.excusedUntil) return;
    for (const set of Object.values(this.subscribers)) {
      for (const subscriber of set) {
        const waited = subscriber.oldestWaitMs(now);
        if (waited > LAG_LIMIT_MS) subscriber.drop(`an update waited ${waited} ms to be sent (lag limit ${LAG_LIMIT_MS} ms)`);
      }
    }
  }

  // End every stream (the upstream failed, or the connector is stopping).
  endAll(code, details, reason) {
    let ended = 0;
    for (const set of Object.values(this.subscribers)) {
      for (const subscriber of [...set]) {
        subscriber.end(code, details, reason);
        ended += 1;
      }
    }
    return ended;
  }

  count() {
    return this.subscribers.account.size + this.subscribers.positions.size;
  }

  close() {
    clearInterval(this.timer);
    clearInterval(this.shedTimer);
  }
}

module.exports = { Hub, QUEUE_LIMIT };
