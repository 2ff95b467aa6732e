#!/usr/bin/env node
// An ExchangeService client built on grpc-js (Node's own gRPC stack, no Python involved).
// It proves a connector serves clients of another gRPC implementation: it checks health, reads
// the account and positions, then subscribes to both streams and prints what arrives.
//
// Every line on stdout is one JSON object with an "event" key, so a test can parse it; an error
// is one {"event":"error",...} line, a message on stderr and a non-zero exit (1; 2 for bad usage).
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const USAGE = `usage: node client.js ADDRESS [options]
       node client.js --driver [--proto-dir DIR]   (the client-driver protocol, docs/client-driver.md)

  ADDRESS                   the connector, HOST:PORT (or --address HOST:PORT)
  --account-updates N       SubscribeAccount: wait for N updates (default 1; 0 skips the stream)
  --symbol SYMBOL           SubscribePositions (and GetPositions) filter (default: empty, every symbol)
  --position-updates N      SubscribePositions: wait for N updates (default 1; 0 skips the stream)
  --timeout SECONDS         how long each stream may take to deliver its N updates (default 10)
  --call-timeout SECONDS    deadline of each unary call (default 5)
  --token TOKEN             send "authorization: Bearer TOKEN" with every call
  --ca FILE                 use TLS, trusting the CA certificate in FILE (PEM)
  --cert FILE --key FILE    client certificate and key for mutual TLS (with --ca)
  --server-name NAME        the name the server certificate must carry (default: ADDRESS's host)
  --proto-dir DIR           where opensqt/exchange/v1/exchange.proto lives (default: the repository's proto/)

stdout, one JSON object a line: client, health, account, positions, subscribing, subscribed,
account_update, position_update, stream_done, done; or error (then exit 1).`;

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const EXCHANGE_PROTO = 'opensqt/exchange/v1/exchange.proto';
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// grpc-js hands Node an IP address as the TLS server name, and Node warns about that (DEP0123)
// on every connection; the warning says nothing about the server, so it is left out of stderr.
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = (warning, ...rest) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? rest[0].code : rest[1];
  if (code !== 'DEP0123') emitWarning(warning, ...rest);
};

class UsageError extends Error {}

// A failed step: `code` is a gRPC status name, or TIMEOUT / ENDED for a stream that fell short.
class StepError extends Error {
  constructor(step, code, details) {
    super(`${step} failed: ${code}: ${details}`);
    this.step = step;
    this.code = code;
    this.details = details;
  }
}

function emit(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

function parseArgs(argv) {
  const options = {
    address: '',
    accountUpdates: 1,
    symbol: '',
    positionUpdates: 1,
    timeout: 10,
    callTimeout: 5,
    token: '',
    ca: '',
    cert: '',
    key: '',
    serverName: '',
    protoDir: path.resolve(__dirname, '..', '..', '..', 'proto'),
  };
  const flags = {
    '--address': ['address', String],
    '--account-updates': ['accountUpdates', count],
    '--symbol': ['symbol', String],
    '--position-updates': ['positionUpdates', count],
    '--timeout': ['timeout', seconds],
    '--call-timeout': ['callTimeout', seconds],
    '--token': ['token', String],
    '--ca': ['ca', String],
    '--cert': ['cert', String],
    '--key': ['key', String],
    '--server-name': ['serverName', String],
    '--proto-dir': ['protoDir', String],
  };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    }
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (!arg.startsWith('--')) {
      rest.push(arg);
      continue;
    }
    const spec = flags[arg];
    if (!spec) throw new UsageError(`unknown option ${arg}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      value = argv[++i];
    }
    options[spec[0]] = spec[1](value, arg);
  }
  if (rest.length > 1) throw new UsageError(`unexpected argument ${rest[1]}`);
  if (rest.length === 1) options.address = rest[0];
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):[0-9]{1,5}$/.test(options.address)) {
    throw new UsageError(options.address ? `address ${options.address} is not HOST:PORT` : 'no address given');
  }
  if ((options.cert || options.key) && !(options.cert && options.key && options.ca)) {
    throw new UsageError('--cert and --key go together, and need --ca');
  }
  return options;
}

function count(value, flag) {
  if (!/^[0-9]+$/.test(value)) throw new UsageError(`${flag} ${value} is not a whole number`);
  return Number(value);
}

function seconds(value, flag) {
  const number = Number(value);
  if (!(number > 0)) throw new UsageError(`${flag} ${value} is not a positive number of seconds`);
  return number;
}

function readFile(file, flag) {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new UsageError(`${flag} ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
  }
}

function loadServices(protoDir) {
  if (!fs.existsSync(path.join(protoDir, EXCHANGE_PROTO))) {
    throw new UsageError(`--proto-dir ${protoDir}: no ${EXCHANGE_PROTO} there`);
  }
  // google/protobuf/timestamp.proto comes with protobufjs, so only the contract's root is needed.
  const exchange = protoLoader.loadSync(EXCHANGE_PROTO, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  // gRPC's standard health service, the one copy the Node connector serves too
  const health = protoLoader.loadSync(path.join(__dirname, '..', 'health.proto'), LOADER_OPTIONS);
  return {
    Exchange: grpc.loadPackageDefinition(exchange).opensqt.exchange.v1.ExchangeService,
    Health: grpc.loadPackageDefinition(health).grpc.health.v1.Health,
  };
}

function makeClients(options, services) {
  let credentials = grpc.credentials.createInsecure();
  const channelOptions = {};
  if (options.ca) {
    const ca = readFile(options.ca, '--ca');
    const key = options.key ? readFile(options.key, '--key') : null;
    const cert = options.cert ? readFile(options.cert, '--cert') : null;
    credentials = grpc.credentials.createSsl(ca, key, cert);
    if (options.serverName) {
      channelOptions['grpc.ssl_target_name_override'] = options.serverName;
      channelOptions['grpc.default_authority'] = options.serverName;
    }
  }
  const exchange = new services.Exchange(options.address, credentials, channelOptions);
  // One channel (one connection) for every call, as a real client of the connector would hold.
  const health = new services.Health(options.address, credentials, { channelOverride: exchange.getChannel() });
  return { exchange, health };
}

function callMetadata(options) {
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  return metadata;
}

function grpcFailure(step, err) {
  const name = STATUS_NAMES[err.code] || String(err.code);
  // grpc-js ends connection errors with an empty "Resolution note: "; it adds nothing.
  const details = (err.details || err.message).replace(/\.? Resolution note: $/, '');
  return new StepError(step, name, details);
}

function unary(client, method, step, request, options) {
  const deadline = new Date(Date.now() + options.callTimeout * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(options), { deadline }, (err, response) => {
      if (err) reject(grpcFailure(step, err));
      else resolve(response);
    });
  });
}

// Prints each update as it arrives and resolves once `wanted` arrived; a stream that ends, fails
// or stays short of `wanted` within the timeout rejects, naming how many did arrive.
function collect(call, step, stream, wanted, options, onUpdate) {
  return new Promise((resolve, reject) => {
    let received = 0;
    let finished = false;
    const finish = (err) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      call.cancel();
      if (err) reject(err);
      else resolve(received);
    };
    const timer = setTimeout(() => {
      finish(new StepError(step, 'TIMEOUT', `received ${received} of ${wanted} updates within ${options.timeout} s`));
    }, options.timeout * 1000);
    call.on('metadata', () => emit({ event: 'subscribed', ...stream }));
    call.on('data', (message) => {
      if (finished) return;
      received += 1;
      onUpdate(message, received);
      if (received >= wanted) finish(null);
    });
    call.on('error', (err) => finish(grpcFailure(step, err)));
    call.on('end', () => {
      finish(new StepError(step, 'ENDED', `the server ended the stream after ${received} of ${wanted} updates`));
    });
  });
}

async function run(options) {
  const services = loadServices(options.protoDir);
  const { exchange, health } = makeClients(options, services);
  try {
    const status = await unary(health, 'Check', 'Health/Check', { service: '' }, options);
    emit({ event: 'health', service: '', status: status.status });

    const account = await unary(exchange, 'GetAccount', 'GetAccount', {}, options);
    emit({ event: 'account', account });

    const request = { symbol: options.symbol };
    const positions = await unary(exchange, 'GetPositions', 'GetPositions', request, options);
    emit({ event: 'positions', symbol: options.symbol, positions: positions.positions });

    if (options.accountUpdates > 0) {
      const stream = { stream: 'account' };
      emit({ event: 'subscribing', ...stream });
      const call = exchange.SubscribeAccount({}, callMetadata(options));
      const received = await collect(call, 'SubscribeAccount', stream, options.accountUpdates, options, (update, index) =>
        emit({ event: 'account_update', index, account: update }),
      );
      emit({ event: 'stream_done', ...stream, received });
    }

    if (options.positionUpdates > 0) {
      const stream = { stream: 'positions', symbol: options.symbol };
      const symbols = new Set();
      emit({ event: 'subscribing', ...stream });
      const call = exchange.SubscribePositions(request, callMetadata(options));
      const received = await collect(call, 'SubscribePositions', stream, options.positionUpdates, options, (update, index) => {
        symbols.add(update.symbol);
        emit({ event: 'position_update', index, position: update });
      });
      emit({ event: 'stream_done', ...stream, received, symbols: [...symbols].sort() });
    }
    emit({ event: 'done' });
  } finally {
    health.close();
    exchange.close();
  }
}

function fail(err, exitCode) {
  const step = err instanceof StepError ? err.step : exitCode === 2 ? 'usage' : 'client';
  const code = err instanceof StepError ? err.code : exitCode === 2 ? 'USAGE' : 'INTERNAL';
  const details = err instanceof StepError ? err.details : err.message;
  emit({ event: 'error', step, code, message: err.message, details });
  process.stderr.write(`exchange interop client: ${err.message}\n`);
  if (exitCode === 2) process.stderr.write(USAGE + '\n');
  process.exitCode = exitCode;
}

function grpcJsVersion() {
  const file = path.join(path.dirname(require.resolve('@grpc/grpc-js')), '..', '..', 'package.json');
  return JSON.parse(fs.readFileSync(file)).version;
}

// --driver: commands on stdin, events on stdout, until end of input (driver.js)
function driverMode(argv) {
  let protoDir = path.resolve(__dirname, '..', '..', '..', 'proto');
  if (argv[0] === '--proto-dir' && argv[1]) protoDir = argv[1];
  else if (argv.length) throw new UsageError(`--driver takes only --proto-dir DIR, got ${argv.join(' ')}`);
  require('./driver').runDriver(loadServices(protoDir), { grpcJs: grpcJsVersion() });
}

function main() {
  if (process.argv[2] === '--driver') {
    try {
      driverMode(process.argv.slice(3));
    } catch (err) {
      fail(err, err instanceof UsageError ? 2 : 1);
    }
    return;
  }
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    fail(err, err instanceof UsageError ? 2 : 1);
    return;
  }
  emit({ event: 'client', node: process.version, grpc_js: grpcJsVersion(), address: options.address, tls: Boolean(options.ca) });
  run(options).catch((err) => fail(err, err instanceof UsageError ? 2 : 1));
}

main();
