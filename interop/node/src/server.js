'use strict';
// `serve`: the gRPC server, the upstream, the hub, health and metrics wired together, and the
// graceful stop on SIGTERM (rules C10, C60-C63): NOT_SERVING at once, every stream ended with
// UNAVAILABLE "the connector is shutting down", calls in flight given a moment, exit 0.

const grpc = require('@grpc/grpc-js');
const log = require('./log');
const { metrics, serveMetrics } = require('./metrics');
const { serverDefinition, healthDefinition } = require('./contract');
const { Hub } = require('./hub');
const { Upstream } = require('./upstream');
const { Health } = require('./health');
const { Tracker } = require('./tasks');
const { makeAuth, refuseSeveralAuthorizations } = require('./auth');
const { makeService, SHUTTING_DOWN } = require('./service');

const DRAIN_MS = 3000; // calls still open this long after SIGTERM are cut
const HEALTH_EVERY_MS = 250; // staleness is a matter of time: health is re-read this often
const FAULT = process.env.EXCHANGE_CONNECTOR_FAULT || '';

async function serve(options) {
  log.setLevel(options.logLevel);
  let stopping = false;
  const tracker = new Tracker();
  let upstream = null;
  const hub = new Hub(() => (upstream ? upstream.recentLagMs() : 0));
  upstream = new Upstream(options.upstream, hub, tracker, { token: options.upstreamToken });
  const health = new Health(() => !stopping && upstream.serving());
  const refresh = () => {
    health.changed();
    metrics.serving.set(health.status() === 'SERVING' ? 1 : 0);
  };
  upstream.on('change', refresh);
  const healthTimer = setInterval(refresh, HEALTH_EVERY_MS);

  const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
  const service = makeService({ upstream, hub, auth: makeAuth(options.token), tracker, stopping: () => stopping, fault: FAULT });
  server.addService(serverDefinition(), service);
  server.addService(healthDefinition(), health.handlers());
  const credentials = options.tls
    ? grpc.ServerCredentials.createSsl(null, [{ private_key: options.tls.key, cert_chain: options.tls.cert }], false)
    : grpc.ServerCredentials.createInsecure();

  let metricsServer = null;
  try {
    await new Promise((resolve, reject) =>
      server.bindAsync(options.listen, credentials, (error, port) => (error ? reject(error) : resolve(port))),
    );
    refuseSeveralAuthorizations(server);
    if (options.metrics) {
      metricsServer = await serveMetrics(options.metrics.host, options.metrics.port, () => {
        metrics.dataAge.set(upstream.dataAgeMs() / 1000);
        metrics.upstreamLag.set(upstream.lagMs / 1000);
        metrics.tasks.set(tracker.live);
        refresh();
      });
    }
  } catch (error) {
    log.error('listen_failed', { reason: error.message });
    process.exit(1);
  }
  log.info('listening', {
    address: options.listen,
    metrics: options.metrics ? `${options.metrics.host}:${options.metrics.port}` : null,
    tls: Boolean(options.tls),
    token: Boolean(options.token),
    upstream: options.upstream,
    ...(FAULT ? { fault: FAULT } : {}),
  });
  upstream.start();

  const stop = (signal) => {
    if (stopping) {
      log.info('shutdown_signal_ignored', { signal, reason: 'already shutting down' });
      return;
    }
    stopping = true;
    log.info('shutdown_started', { signal });
    refresh();
    const streams = hub.endAll(grpc.status.UNAVAILABLE, SHUTTING_DOWN, 'shutdown');
    health.endAll();
    upstream.stop();
    clearInterval(healthTimer);
    let finished = false;
    const finish = (cut) => {
      if (finished) return;
      finished = true;
      hub.close();
      const exit = () => {
        log.info('shutdown_complete', { streams_ended: streams, calls_cut: cut });
        process.exit(0);
      };
      if (metricsServer) {
        metricsServer.closeAllConnections?.();
        metricsServer.close(exit);
      } else exit();
    };
    const timer = setTimeout(() => {
      const cut = tracker.live;
      server.forceShutdown();
      finish(cut);
    }, DRAIN_MS);
    server.tryShutdown(() => {
      clearTimeout(timer);
      finish(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

module.exports = { serve };
