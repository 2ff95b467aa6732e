'use strict';
// Bearer tokens (C16, C36): every ExchangeService call must carry `authorization: Bearer <token>`;
// refusals are counted by reason and logged at most once per 10 s.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const log = require('./log');
const { metrics } = require('./metrics');

function makeAuth(token) {
  if (!token) return () => null;
  const expected = Buffer.from(`Bearer ${token}`);
  const logRefusal = log.rateLimited('warning', 'auth_rejected', 10000);
  // The refusal to answer with, or null when the call may go on.
  return (call) => {
    const values = call.metadata.get('authorization');
    const reason = values.length === 0 ? 'missing' : matches(expected, String(values[0])) ? null : 'invalid';
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

function matches(expected, given) {
  const buffer = Buffer.from(given);
  return buffer.length === expected.length && crypto.timingSafeEqual(buffer, expected);
}

module.exports = { makeAuth };
