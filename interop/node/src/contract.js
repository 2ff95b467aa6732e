'use strict';
// The contract, loaded at run time from the repository's proto/ folder (never copied here), and
// the standard health service. The server's definitions are adjusted in two ways: requests that
// do not parse become a marked value the handlers refuse with INVALID_ARGUMENT (grpc-js would
// answer INTERNAL), and responses may be bytes already encoded, so one encoding of an update
// serves every subscriber and every GetAccount.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const CONTRACT_FILE = 'opensqt/exchange/v1/exchange.proto';
const HEALTH_FILE = path.resolve(__dirname, '..', 'health.proto');
const PACKAGE = 'opensqt.exchange.v1';
const SERVICE_NAME = `${PACKAGE}.ExchangeService`;
const MALFORMED = Symbol('malformed request');

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function loadDefinitions() {
  const contract = protoLoader.loadSync(CONTRACT_FILE, { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] });
  const health = protoLoader.loadSync(HEALTH_FILE, LOADER_OPTIONS);
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) =>
    target.startsWith('google/protobuf/') ? target : path.join(PROTO_ROOT, target);
  root.loadSync(CONTRACT_FILE, { keepCase: true });
  return { contract, health, root };
}

const { contract, health, root } = loadDefinitions();
const strict = new TextDecoder('utf-8', { fatal: true });

// Throws unless every string field of the top-level message is valid UTF-8 (protobufjs itself
// replaces bad bytes silently).
function checkStrings(type, buffer) {
  const reader = protobuf.Reader.create(buffer);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = type.fieldsById[tag >>> 3];
    if ((tag & 7) === 2 && field && field.type === 'string') {
      const bytes = reader.bytes();
      try {
        strict.decode(bytes);
      } catch {
        throw new Error(`field ${field.name} is not valid UTF-8`);
      }
    } else {
      reader.skipType(tag & 7);
    }
  }
}

function guardedDeserialize(method) {
  const type = root.lookupType(`${PACKAGE}.${method.requestType.type.name}`);
  return (buffer) => {
    try {
      checkStrings(type, buffer);
      return method.requestDeserialize(buffer);
    } catch (error) {
      return { [MALFORMED]: String(error && error.message ? error.message : error) };
    }
  };
}

function serverDefinition() {
  const service = contract[SERVICE_NAME];
  const adjusted = {};
  for (const [name, method] of Object.entries(service)) {
    const encode = method.responseSerialize;
    adjusted[name] = {
      ...method,
      requestDeserialize: guardedDeserialize(method),
      responseSerialize: (value) => (Buffer.isBuffer(value) ? value : encode(value)),
    };
  }
  return adjusted;
}

// The upstream client: stream messages arrive as {raw, message}, so the raw bytes can be fanned
// out unchanged once the decoded message has passed validation.
function upstreamClientConstructor() {
  const service = contract[SERVICE_NAME];
  const adjusted = {};
  for (const [name, method] of Object.entries(service)) {
    const decode = method.responseDeserialize;
    adjusted[name] = method.responseStream
      ? { ...method, responseDeserialize: (raw) => ({ raw, message: decode(raw) }) }
      : method;
  }
  return grpc.makeGenericClientConstructor(adjusted, 'ExchangeService');
}

function accountEncoder() {
  return contract[SERVICE_NAME].GetAccount.responseSerialize;
}

function healthDefinition() {
  return health['grpc.health.v1.Health'];
}

function healthClientConstructor() {
  return grpc.makeGenericClientConstructor(healthDefinition(), 'Health');
}

module.exports = {
  MALFORMED,
  SERVICE_NAME,
  serverDefinition,
  healthDefinition,
  upstreamClientConstructor,
  accountEncoder,
  healthClientConstructor,
  isMalformed: (request) => Boolean(request && request[MALFORMED] !== undefined),
  malformedReason: (request) => request[MALFORMED],
};
