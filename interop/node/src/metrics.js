'use strict';
// Prometheus metrics with the names docs/sut-manifest.md and docs/deployment.md list, served on
// --metrics-listen at /metrics.

const http = require('node:http');
const client = require('prom-client');

const registry = new client.Registry();
const make = (Kind, name, help, labelNames = []) => new Kind({ name, help, labelNames, registers: [registry] });

const metrics = {
  registry,
  serving: make(client.Gauge, 'exchange_connector_serving', '1 while health reads SERVING'),
  upstreamConnections: make(client.Gauge, 'exchange_connector_upstream_connections', 'upstream exchange connections held'),
  upstreamReconnects: make(client.Counter, 'exchange_connector_upstream_reconnects_total', 'upstream reconnections'),
  subscribers: make(client.Gauge, 'exchange_connector_subscribers', 'subscribers held now', ['topic']),
  dropped: make(
    client.Counter,
    'exchange_connector_subscribers_dropped_total',
    'subscribers ended with RESOURCE_EXHAUSTED for falling behind',
    ['topic'],
  ),
  invalid: make(
    client.Counter,
    'exchange_connector_upstream_invalid_messages_total',
    'upstream messages refused by validation (never forwarded)',
    ['topic'],
  ),
  sent: make(client.Counter, 'exchange_connector_messages_sent_total', 'updates written to subscribers', ['topic']),
  upstreamMessages: make(client.Counter, 'exchange_connector_upstream_messages_total', 'updates read upstream', ['topic']),
  dataAge: make(client.Gauge, 'exchange_connector_data_age_seconds', "seconds since the upstream's last sign of life"),
  upstreamLag: make(client.Gauge, 'exchange_connector_upstream_lag_seconds', "how far the upstream read trails the exchange's stamps"),
  malformed: make(
    client.Counter,
    'exchange_connector_malformed_requests_total',
    'requests refused as not parseable',
    ['method'],
  ),
  authRejected: make(client.Counter, 'exchange_connector_auth_rejected_total', 'calls refused UNAUTHENTICATED', ['reason']),
  tasks: make(
    client.Gauge,
    'exchange_connector_tasks',
    "the connector's concurrent tasks: calls and streams in progress, upstream calls and timers it owns",
  ),
  refused: make(
    client.Counter,
    'exchange_connector_calls_refused_total',
    'new calls refused: overloaded (too many in flight, or shedding) or shutting_down',
    ['reason'],
  ),
  upstreamGetPositions: make(
    client.Counter,
    'exchange_connector_upstream_get_positions_calls_total',
    'GetPositions calls made to the exchange',
  ),
  getPositionsShared: make(
    client.Counter,
    'exchange_connector_get_positions_shared_total',
    'GetPositions calls answered by a call already in flight',
  ),
};

for (const topic of ['account', 'positions']) {
  metrics.subscribers.set({ topic }, 0);
  metrics.dropped.inc({ topic }, 0);
  metrics.invalid.inc({ topic }, 0);
}
for (const reason of ['missing', 'invalid']) metrics.authRejected.inc({ reason }, 0);
for (const reason of ['overloaded', 'shutting_down']) metrics.refused.inc({ reason }, 0);

// Start the /metrics endpoint; resolves with the server once it listens.
function serveMetrics(host, port, beforeScrape) {
  const server = http.createServer(async (request, response) => {
    if (request.method !== 'GET' || request.url.split('?')[0] !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    beforeScrape();
    const body = await registry.metrics();
    response.writeHead(200, { 'content-type': registry.contentType }).end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

module.exports = { metrics, serveMetrics };
