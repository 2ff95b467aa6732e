// The client-driver protocol (docs/client-driver.md) over a small grpc-js client of the
// ExchangeService: `node client.js --driver`. Commands arrive as JSON lines on stdin, events leave
// as JSON lines on stdout, the log goes to stderr. The client is deliberately small: it validates
// addresses and contract decimals, honours deadlines and cancellation, and resubscribes a broken
// stream by itself with the connect command's backoff hints (stream.js).
'use strict';

const readline = require('readline');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const { ResubscribingStream, statusName } = require('./stream');

const STARTED = process.hrtime.bigint();
const ACCOUNT_MONEY = ['total_balance', 'available_balance', 'equity', 'unrealized_pnl', 'margin_used', 'margin_level', 'leverage'];
const POSITION_MONEY = ['size', 'entry_price', 'mark_price', 'leverage', 'unrealized_pnl', 'liquidation'];
const HOST_LABEL = /^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$/;
const DIAGNOSE_MS = 250; // after a connect timeout, how long a probe call may take to say why
// Reconnect backoff when the connect command gives no hints.
const DEFAULT_BACKOFF = { initialMs: 100, maxMs: 5000 };

function nowMs() {
  return Math.round(Number(process.hrtime.bigint() - STARTED) / 1000) / 1000;
}

function emit(event, id, fields) {
  const record = { event };
  if (id !== null && id !== undefined) record.id = id;
  record.t_ms = nowMs();
  process.stdout.write(JSON.stringify({ ...record, ...fields }) + '\n');
}

function log(message) {
  process.stderr.write(`${new Date().toISOString()} node-driver ${message}\n`);
}

// ---------------------------------------------------------------------------------------- payloads

function timestampJson(stamp) {
  const seconds = Number(stamp.seconds || 0);
  const nanos = Number(stamp.nanos || 0);
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  return nanos ? `${base}.${String(nanos).padStart(9, '0')}Z` : `${base}Z`;
}

// Canonical proto3 JSON with the .proto's field names: defaults left out, Timestamp as RFC 3339.
function protoJson(message) {
  const out = {};
  for (const [name, value] of Object.entries(message)) {
    if (value === null || value === undefined || value === '') continue;
    out[name] = typeof value === 'object' ? timestampJson(value) : value;
  }
  return out;
}

// ---------------------------------------------------------------------------------------- addresses

function addressProblem(text) {
  if (text.includes('://')) return 'a URL scheme is not expected';
  let host;
  let port;
  if (text.startsWith('[')) {
    const end = text.indexOf(']:');
    if (end < 0) return 'an IPv6 address in brackets must be followed by :port';
    host = text.slice(1, end);
    port = text.slice(end + 2);
    if (!/^[0-9a-fA-F:.]+$/.test(host)) return `${host} is not an IPv6 address`;
  } else {
    const at = text.lastIndexOf(':');
    if (at < 0) return 'the :port is missing';
    host = text.slice(0, at);
    port = text.slice(at + 1);
    if (host.includes(':')) return 'an IPv6 address must be written in brackets';
    if (!host) return 'the host is missing';
    if (!host.split('.').every((label) => HOST_LABEL.test(label))) return `${JSON.stringify(host)} is not a host name`;
  }
  if (!/^[0-9]+$/.test(port)) return `port ${JSON.stringify(port)} is not a number`;
  if (Number(port) < 1 || Number(port) > 65535) return `port ${port} is out of range 1-65535`;
  return null;
}

// ---------------------------------------------------------------------------------------- the session

class Driver {
  constructor(services) {
    this.services = services;
    this.client = null;
    this.options = null;
    this.calls = new Map(); // id -> ClientUnaryCall in flight
    this.streams = new Map(); // id -> ResubscribingStream
    this.finished = new Set();
  }

  handle(command) {
    const id = command.id;
    const started = nowMs();
    if (typeof id !== 'string' || !id) {
      this.error(null, 'bad_command', `every command needs a non-empty string id, got ${JSON.stringify(command)}`, started);
      return;
    }
    const handlers = {
      connect: () => this.connect(id, command, started),
      get_account: () => this.unary(id, 'GetAccount', {}, command, started, (answer) => ({ account: protoJson(answer) })),
      get_positions: () =>
        this.unary(id, 'GetPositions', { symbol: command.symbol || '' }, command, started, (answer) => ({
          positions: answer.positions.map(protoJson),
        })),
      subscribe_account: () => this.subscribe(id, 'SubscribeAccount', {}, 'account', ACCOUNT_MONEY),
      subscribe_positions: () =>
        this.subscribe(id, 'SubscribePositions', { symbol: command.symbol || '' }, 'position', POSITION_MONEY),
      cancel: () => this.cancel(id, command, started),
      close: () => {
        this.closeAll();
        emit('closed', id, { took_ms: nowMs() - started });
      },
    };
    const handler = handlers[command.cmd];
    if (!handler) {
      this.error(id, 'bad_command', `unknown command ${JSON.stringify(command.cmd)} (known: ${Object.keys(handlers).join(', ')})`, started);
      return;
    }
    if (command.cmd !== 'connect' && !['cancel', 'close'].includes(command.cmd) && !this.client) {
      this.error(id, 'bad_command', 'no client: send connect first', started);
      return;
    }
    handler();
  }

  connect(id, command, started) {
    if (this.client) {
      this.error(id, 'bad_command', 'a client is already connected: send close first', started);
      return;
    }
    const address = typeof command.address === 'string' ? command.address.trim() : '';
    if (!address) {
      this.error(id, 'empty_address', 'exchange address is empty; expected host:port or [::1]:port', started);
      return;
    }
    const problem = addressProblem(address);
    if (problem) {
      this.error(id, 'invalid_address', `exchange address ${JSON.stringify(command.address)} is malformed: ${problem}`, started);
      return;
    }
    let credentials = grpc.credentials.createInsecure();
    const tls = command.tls || null;
    try {
      if (tls) {
        const read = (file) => (file ? fs.readFileSync(file) : null);
        credentials = grpc.credentials.createSsl(read(tls.ca), read(tls.key), read(tls.cert));
      }
    } catch (err) {
      this.error(id, 'bad_command', `cannot read the TLS files: ${err.message}`, started);
      return;
    }
    const backoff = backoffPolicy(command.reconnect);
    // The channel redials as quickly as the streams resubscribe, so a restarted server is found soon.
    const client = new this.services.Exchange(address, credentials, {
      'grpc.initial_reconnect_backoff_ms': Math.round(backoff.initialMs),
      'grpc.max_reconnect_backoff_ms': Math.round(backoff.maxMs),
    });
    this.client = client;
    this.options = {
      token: command.token || '',
      callTimeoutMs: command.call_timeout_ms || null,
      backoff,
    };
    const connectMs = Number(command.connect_timeout_ms || 5000);
    client.waitForReady(new Date(Date.now() + connectMs), (err) => {
      if (this.client !== client) return; // closed meanwhile
      if (!err) {
        emit('connected', id, { took_ms: nowMs() - started, tls: Boolean(tls) });
        return;
      }
      // why the channel is not ready, as a fail-fast call tells it
      const probe = new Date(Date.now() + DIAGNOSE_MS);
      client.GetAccount({}, new grpc.Metadata({ waitForReady: false }), { deadline: probe }, (probeErr) => {
        const cause = probeErr ? (probeErr.details || probeErr.message).replace(/\.? Resolution note: $/, '') : '';
        client.close();
        if (this.client === client) this.client = null;
        const what = tls ? 'TLS connection' : 'connection';
        this.error(
          id,
          'connect_timeout',
          `could not establish a ${what} to ${address} within ${connectMs} ms (connect timeout)${cause ? `; last error: ${cause}` : ''}`,
          started,
        );
      });
    });
  }

  metadata() {
    const metadata = new grpc.Metadata();
    if (this.options.token) metadata.set('authorization', `Bearer ${this.options.token}`);
    return metadata;
  }

  unary(id, method, request, command, started, render) {
    const deadlineMs = command.deadline_ms || this.options.callTimeoutMs;
    const callOptions = deadlineMs ? { deadline: new Date(Date.now() + Number(deadlineMs)) } : {};
    const call = this.client[method](request, this.metadata(), callOptions, (err, answer) => {
      this.calls.delete(id);
      this.finished.add(id);
      if (!err) {
        emit('result', id, { took_ms: nowMs() - started, ...render(answer) });
        return;
      }
      const code = statusName(err.code);
      const details = err.details || '';
      if (code === 'CANCELLED' && call.cancelledByUs) {
        this.error(id, 'cancelled', 'the call was cancelled', started, { code });
      } else {
        this.error(id, 'rpc', `${method} failed: ${code}: ${details}`, started, { code, details });
      }
    });
    this.calls.set(id, call);
  }

  subscribe(id, method, request, field, money) {
    const client = this.client;
    const stream = new ResubscribingStream({
      name: method,
      open: (waitForReady) => {
        const metadata = this.metadata();
        if (waitForReady) metadata.setOptions({ waitForReady: true });
        return client[method](request, metadata);
      },
      money,
      policy: this.options.backoff,
      log,
      onSubscribed: () => emit('subscribed', id, {}),
      onUpdate: (message) => emit('update', id, { [field]: protoJson(message) }),
      onBreak: (fields) => emit('stream_error', id, fields),
      onReconnected: () => emit('reconnected', id, {}),
    });
    this.streams.set(id, stream);
  }

  cancel(id, command, started) {
    const target = command.target;
    if (this.streams.has(target)) {
      this.streams.get(target).stop(); // from here on nothing of it reaches the owner
      this.streams.delete(target);
      this.finished.add(target);
    } else if (this.calls.has(target)) {
      const call = this.calls.get(target);
      call.cancelledByUs = true;
      call.cancel(); // its callback runs first and reports the call cancelled
      setImmediate(() => call.cancel()); // reaches a call grpc-js made after the cancel (stream.js)
    } else if (!this.finished.has(target)) {
      this.error(id, 'bad_command', `no call or stream has the id ${JSON.stringify(target)}`, started);
      return;
    }
    setImmediate(() => emit('cancelled', id, { target, took_ms: nowMs() - started }));
  }

  closeAll() {
    for (const stream of this.streams.values()) stream.stop();
    this.streams.clear();
    for (const call of this.calls.values()) {
      call.cancelledByUs = true;
      call.cancel();
      setImmediate(() => call.cancel());
    }
    if (this.client) this.client.close();
    this.client = null;
  }

  error(id, kind, message, started, fields = {}) {
    emit('error', id, { kind, code: fields.code || '', details: fields.details || '', message, took_ms: nowMs() - started });
  }
}

// The connect command's reconnect hints (milliseconds), or the defaults; max is never below initial.
function backoffPolicy(hints) {
  const positive = (value, fallback) => (typeof value === 'number' && value > 0 ? value : fallback);
  const initialMs = positive(hints && hints.initial_backoff_ms, DEFAULT_BACKOFF.initialMs);
  const maxMs = Math.max(initialMs, positive(hints && hints.max_backoff_ms, DEFAULT_BACKOFF.maxMs));
  return { initialMs, maxMs };
}

function runDriver(services, versions) {
  const driver = new Driver(services);
  emit('ready', null, { protocol: 1, library: 'interop/node/client grpc-js client', language: `node ${process.version}`, grpc_js: versions.grpcJs });
  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    let command;
    try {
      command = JSON.parse(line);
      if (typeof command !== 'object' || command === null || Array.isArray(command)) throw new Error('a command is a JSON object');
    } catch (err) {
      emit('error', null, { kind: 'bad_command', code: '', details: '', message: `not a command: ${err.message}`, took_ms: 0 });
      return;
    }
    try {
      driver.handle(command);
    } catch (err) {
      emit('error', command.id, { kind: 'bad_command', code: '', details: '', message: String(err.message || err), took_ms: 0 });
    }
  });
  lines.on('close', () => {
    driver.closeAll();
    log('end of input: closed');
    setImmediate(() => process.exit(0));
  });
}

module.exports = { runDriver };
