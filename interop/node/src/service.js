'use strict';
// opensqt.exchange.v1.ExchangeService: GetAccount from the connector's view (C8, C30, C32),
// GetPositions passed through with calls in flight shared per symbol (C5, C37), and the two
// subscriptions served from the hub (C4, C5, C7). Every method refuses a malformed request
// (C35), a missing or wrong token (C16), a bad symbol (C6), and answers UNAVAILABLE while the
// upstream is down or the connector is stopping (C9, C10), and past MAX_CALLS in flight (C39).

const grpc = require('@grpc/grpc-js');
const log = require('./log');
const { metrics } = require('./metrics');
const { isMalformed, malformedReason } = require('./contract');
const { validSymbol } = require('./decimal');
const { describe } = require('./upstream');

const DATA_AGE_KEY = 'x-opensqt-data-age-ms';
const GET_POSITIONS_DEADLINE_MS = 5000;
const SHUTTING_DOWN = 'the connector is shutting down';
const MAX_CALLS = 10000; // calls and streams in flight past which new calls are refused (C39)

function makeService({ upstream, hub, auth, tracker, stopping, fault }) {
  const sharedPositions = new Map(); // symbol -> the upstream call in flight
  const logMalformed = log.rateLimited('warning', 'malformed_request', 10000);

  // The status to refuse the call with before any work, or null.
  function admit(method, call, symbol) {
    if (isMalformed(call.request)) {
      metrics.malformed.inc({ method });
      logMalformed({ method, peer: call.getPeer(), reason: malformedReason(call.request) });
      return { code: grpc.status.INVALID_ARGUMENT, details: `malformed ${method} request: ${malformedReason(call.request)}` };
    }
    const refusal = auth(call);
    if (refusal) return refusal;
    if (symbol !== undefined && !validSymbol(symbol)) {
      return {
        code: grpc.status.INVALID_ARGUMENT,
        details: `symbol ${JSON.stringify(symbol.slice(0, 20))} is not a valid instrument name (1-32 characters of A-Z0-9, or empty for every symbol)`,
      };
    }
    if (stopping()) {
      metrics.refused.inc({ reason: 'shutting_down' });
      return { code: grpc.status.UNAVAILABLE, details: SHUTTING_DOWN };
    }
    if (tracker.live >= MAX_CALLS) {
      metrics.refused.inc({ reason: 'overloaded' });
      return { code: grpc.status.RESOURCE_EXHAUSTED, details: `the connector is overloaded: ${tracker.live} calls in flight (limit ${MAX_CALLS})` };
    }
    return null;
  }

  function unary(method, work) {
    return (call, callback) => {
      const done = tracker.begin();
      const answer = (error, value, metadata) => {
        done();
        if (metadata && !error) call.sendMetadata(metadata);
        callback(error, value);
      };
      const symbol = method === 'GetPositions' && !isMalformed(call.request) ? call.request.symbol : undefined;
      const refusal = admit(method, call, symbol);
      if (refusal) answer(refusal);
      else work(call, answer);
    };
  }

  function ageMetadata(ms) {
    const metadata = new grpc.Metadata();
    metadata.set(DATA_AGE_KEY, String(Math.max(0, Math.round(ms))));
    return metadata;
  }

  function getAccount(call, answer) {
    const stale = upstream.staleness();
    if (stale) return answer({ code: grpc.status.UNAVAILABLE, details: stale });
    if (upstream.accountProblem) return answer({ code: grpc.status.UNAVAILABLE, details: upstream.accountProblem });
    if (!upstream.account) {
      return answer({ code: grpc.status.UNAVAILABLE, details: 'no account from the upstream exchange yet' });
    }
    return answer(null, upstream.accountRaw, ageMetadata(upstream.dataAgeMs()));
  }

  function getPositions(call, answer) {
    if (upstream.state !== 'up') return answer({ code: grpc.status.UNAVAILABLE, details: upstream.lossReason });
    const symbol = call.request.symbol;
    let shared = sharedPositions.get(symbol);
    if (shared) metrics.getPositionsShared.inc();
    else {
      metrics.upstreamGetPositions.inc();
      const done = tracker.begin();
      shared = upstream.getPositions(symbol, GET_POSITIONS_DEADLINE_MS).finally(() => {
        done();
        sharedPositions.delete(symbol);
      });
      sharedPositions.set(symbol, shared);
    }
    shared.then(
      (response) => {
        const positions = (response.positions || []).filter((p) => symbol === '' || p.symbol === symbol);
        answer(null, { positions }, ageMetadata(0));
      },
      (error) => {
        const code = error.code === grpc.status.INVALID_ARGUMENT ? error.code : grpc.status.UNAVAILABLE;
        answer({ code, details: `the upstream exchange failed: ${describe(error)}` });
      },
    );
    return undefined;
  }

  // A new subscription's refusal while the upstream is down or the hub is shedding (C9, C38).
  function unready() {
    if (upstream.state !== 'up') return { code: grpc.status.UNAVAILABLE, details: upstream.lossReason };
    if (hub.overloaded) {
      metrics.refused.inc({ reason: 'overloaded' });
      return { code: grpc.status.UNAVAILABLE, details: 'the connector is overloaded and shedding subscribers; retry shortly' };
    }
    return null;
  }

  function subscribe(topic, method) {
    return (call) => {
      const symbol = topic === 'positions' && !isMalformed(call.request) ? call.request.symbol : undefined;
      const refusal = admit(method, call, symbol) || unready();
      if (refusal) {
        call.emit('error', refusal);
        return;
      }
      const done = tracker.begin();
      for (const event of ['cancelled', 'close', 'finish', 'error']) call.on(event, done);
      // the fault switch of the conformance suite's faulty-SUT set: no filtering at all
      const filter = fault === 'ignore-symbol-filter' ? '' : symbol || '';
      hub.add(topic, call, filter);
      call.sendMetadata(new grpc.Metadata()); // headers once registered, before any update (C7)
    };
  }

  return {
    GetAccount: unary('GetAccount', getAccount),
    GetPositions: unary('GetPositions', getPositions),
    SubscribeAccount: subscribe('account', 'SubscribeAccount'),
    SubscribePositions: subscribe('positions', 'SubscribePositions'),
  };
}

module.exports = { makeService, SHUTTING_DOWN };
