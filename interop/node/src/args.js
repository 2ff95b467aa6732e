'use strict';
// The command line: `serve` (the default) and `health`. A bad flag exits 2 with one line naming it.

const fs = require('node:fs');

const SERVE_FLAGS = {
  '--listen': 'listen',
  '--upstream': 'upstream',
  '--metrics-listen': 'metricsListen',
  '--tls-cert': 'tlsCert',
  '--tls-key': 'tlsKey',
  '--token': 'token',
  '--token-file': 'tokenFile',
  '--upstream-token': 'upstreamToken',
  '--log-level': 'logLevel',
};
const HEALTH_FLAGS = { '--address': 'address', '--tls-ca': 'tlsCa', '--timeout': 'timeout' };

class UsageError extends Error {}

function parseFlags(argv, known) {
  const options = {};
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (!(flag in known)) throw new UsageError(`unknown argument ${flag}`);
    if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
    options[known[flag]] = argv[++i];
  }
  return options;
}

function hostPort(flag, value) {
  const match = /^(\[[^\]]+\]|[^:\s]+):(\d{1,5})$/.exec(value || '');
  if (!match || Number(match[2]) > 65535) throw new UsageError(`${flag}: expected host:port, got ${JSON.stringify(value)}`);
  return { host: match[1].replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

function readFile(flag, file) {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new UsageError(`${flag}: cannot read ${file}: ${error.code || error.message}`);
  }
}

function parse(argv) {
  const [first, ...rest] = argv;
  if (first === 'health') {
    const options = parseFlags(rest, HEALTH_FLAGS);
    hostPort('--address', options.address);
    return { command: 'health', ...options, ca: options.tlsCa ? readFile('--tls-ca', options.tlsCa) : null };
  }
  const options = parseFlags(first === 'serve' ? rest : argv, SERVE_FLAGS);
  hostPort('--listen', options.listen);
  hostPort('--upstream', options.upstream);
  const metrics = options.metricsListen ? hostPort('--metrics-listen', options.metricsListen) : null;
  if (Boolean(options.tlsCert) !== Boolean(options.tlsKey)) throw new UsageError('--tls-cert and --tls-key go together');
  if (options.token && options.tokenFile) throw new UsageError('--token and --token-file: give the token one way');
  let token = options.token || '';
  if (options.tokenFile) token = readFile('--token-file', options.tokenFile).toString('utf8').trim();
  if (!token && process.env.EXCHANGE_CONNECTOR_TOKEN) token = process.env.EXCHANGE_CONNECTOR_TOKEN.trim();
  if (!token && process.env.OPENSQT_TOKEN) token = process.env.OPENSQT_TOKEN.trim();
  if (options.token !== undefined && !token) throw new UsageError('--token: the token is empty');
  return {
    command: 'serve',
    listen: options.listen,
    upstream: options.upstream,
    metrics,
    tls: options.tlsCert ? { cert: readFile('--tls-cert', options.tlsCert), key: readFile('--tls-key', options.tlsKey) } : null,
    token,
    upstreamToken: options.upstreamToken || process.env.EXCHANGE_CONNECTOR_UPSTREAM_TOKEN || '',
    logLevel: options.logLevel || process.env.LOG_LEVEL || 'info',
  };
}

module.exports = { parse, UsageError };
