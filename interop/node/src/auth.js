'use strict';
// Bearer tokens (C16, C36): every ExchangeService call must carry one `authorization: Bearer <token>`
// header (the scheme in any case, RFC 7235; one space; the token compared whole and case-sensitively);
// several headers, another scheme or other whitespace are refused. Refusals are counted by reason
// and logged at most once per 10 s.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const log = require('./log');
const { metrics } = require('./metrics');

function makeAuth(token) {
  if (!token) return () => null;
  const expected = Buffer.from(token);
  const logRefusal = log.rateLimited('warning', 'auth_rejected', 10000);
  // The refusal to answer with, or null when the call may go on.
  return (call) => {
    const values = call.metadata.get('authorization');
    const reason =
      values.length === 0 ? 'missing' : values.length === 1 && matches(expected, String(values[0])) ? null : 'invalid';
    if (reason === null) return null;
    metrics.authRejected.inc({ reason });
    logRefusal({ reason, peer: call.getPeer() });
    const details =
      reason === 'missing'
        ? 'missing bearer token: send the metadata authorization: Bearer <token>'
        : 'invalid bearer token';
    return { code: grpc.status.UNAUTHENTICATED, details };
  };
}

// `given` is `<scheme> <token>`: the scheme Bearer in any case, then the token exactly.
function matches(expected, given) {
  const space = given.indexOf(' ');
  if (space < 0 || given.slice(0, space).toLowerCase() !== 'bearer') return false;
  const buffer = Buffer.from(given.slice(space + 1));
  return buffer.length === expected.length && crypto.timingSafeEqual(buffer, expected);
}

// Node's HTTP/2 layer keeps only the first of several `authorization` headers, so the check above
// could not see a second one; the raw header list can. A request that carries several gets an
// authorization value no token matches, before grpc-js reads its metadata. `server.http2Servers`
// is grpc-js's own (1.14): the servers it listens with, filled by bindAsync.
const SEVERAL = 'several authorization headers';

function refuseSeveralAuthorizations(server) {
  for (const http2Server of server.http2Servers.keys()) {
    http2Server.prependListener('stream', (_stream, headers, _flags, rawHeaders) => {
      let count = 0;
      for (let i = 0; i < rawHeaders.length; i += 2) if (String(rawHeaders[i]).toLowerCase() === 'authorization') count++;
      if (count > 1) headers.authorization = SEVERAL;
    });
  }
}

module.exports = { makeAuth, refuseSeveralAuthorizations };
