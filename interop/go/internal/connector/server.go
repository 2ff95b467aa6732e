package connector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// Options of `exchange_connector serve`.
type Options struct {
	Listen        string
	Upstream      string
	MetricsListen string
	TLSCert       string
	TLSKey        string
	Token         string
	UpstreamToken string
	LogLevel      int
	// Fault is the suite's faulty-SUT switch (EXCHANGE_CONNECTOR_FAULT); "" in normal use.
	Fault string
}

// Timings of the life cycle (rules C10, C11, C62, C63).
const (
	healthEvery = 250 * time.Millisecond // staleness is a matter of time: health is re-read this often
	drainFor    = 3 * time.Second        // GracefulStop gets this long before Stop cuts what is left
	watchGrace  = 100 * time.Millisecond // health Watch streams see NOT_SERVING before they end
)

// watchableHealth is grpc-go's health server whose Watch streams end when the connector stops:
// GracefulStop waits for every open RPC, and the stock Watch never returns by itself.
type watchableHealth struct {
	*health.Server
	stopping <-chan struct{}
}

type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }

func (h watchableHealth) Watch(request *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := h.Server.Watch(request, watchStream{stream, ctx})
	select {
	case <-h.stopping:
		return status.Error(codes.Unavailable, ShuttingDown)
	default:
		return err
	}
}

// Serve runs the connector until SIGTERM or SIGINT; it returns the process's exit code.
func Serve(opts Options) int {
	log := NewLogger(os.Stderr, opts.LogLevel)
	defer log.Close() // every line written before the process exits
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := NewMetrics(registry)

	listener, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		log.Error("failed", "reason", fmt.Sprintf("cannot listen on %s: %v", opts.Listen, err))
		return 1
	}
	var metricsServer *http.Server
	if opts.MetricsListen != "" {
		metricsListener, err := net.Listen("tcp", opts.MetricsListen)
		if err != nil {
			_ = listener.Close()
			log.Error("failed", "reason", fmt.Sprintf("cannot listen on %s for metrics: %v", opts.MetricsListen, err))
			return 1
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
		metricsServer = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = metricsServer.Serve(metricsListener) }()
	}

	hub := NewHub(log, metrics)
	hub.IgnoreSymbolFilter = opts.Fault == "ignore-symbol-filter"
	upstream, err := NewUpstream(opts.Upstream, opts.UpstreamToken, hub, log, metrics)
	if err != nil {
		log.Error("failed", "reason", fmt.Sprintf("upstream %s: %v", opts.Upstream, err))
		return 1
	}
	hub.LagOf = upstream.RecentLag
	service := NewService(upstream, hub, log, metrics, opts.Token)

	serverOptions := []grpc.ServerOption{
		grpc.ForceServerCodecV2(contract.NewCodec()),
		// grpc-go's default policy answers a client pinging more than once in 5 minutes with
		// GOAWAY too_many_pings; clients of C31 ping every 10 s, with or without streams.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// half-open connections are found and closed
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
	creds := insecure.NewCredentials()
	if opts.TLSCert != "" {
		certificate, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			log.Error("failed", "reason", fmt.Sprintf("TLS certificate: %v", err))
			return 1
		}
		creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{certificate}, MinVersion: tls.VersionTLS12})
	}
	// what each connection really writes, for the lag bound of C34 (wire.go)
	wire := &Wire{}
	serverOptions = append(serverOptions, grpc.Creds(wire.Credentials(creds)), grpc.StatsHandler(wire.StatsHandler()))
	server := grpc.NewServer(serverOptions...)
	server.RegisterService(service.Desc(), service)
	healthServer := health.NewServer()
	stopWatches := make(chan struct{})
	healthpb.RegisterHealthServer(server, watchableHealth{Server: healthServer, stopping: stopWatches})
	reflection.Register(server)

	var healthMu sync.Mutex
	refresh := func() {
		healthMu.Lock()
		defer healthMu.Unlock()
		state := healthpb.HealthCheckResponse_NOT_SERVING
		if !service.Stopping() && upstream.Serving() {
			state = healthpb.HealthCheckResponse_SERVING
		}
		if service.Stopping() {
			return // Shutdown set NOT_SERVING for good
		}
		healthServer.SetServingStatus("", state)
		healthServer.SetServingStatus(pb.ExchangeService_ServiceDesc.ServiceName, state)
		if state == healthpb.HealthCheckResponse_SERVING {
			metrics.Serving.Set(1)
		} else {
			metrics.Serving.Set(0)
		}
		metrics.DataAge.Set(upstream.DataAge(time.Now()).Seconds())
		metrics.UpstreamLag.Set(upstream.Lag().Seconds())
	}
	upstream.OnChange = refresh
	refresh()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	log.Info("listening", "address", opts.Listen, "metrics", opts.MetricsListen, "tls", opts.TLSCert != "",
		"token", opts.Token != "", "upstream", opts.Upstream, "fault", opts.Fault)

	var background sync.WaitGroup
	background.Go(hub.Run)
	background.Go(func() { upstream.Run(ctx) })
	background.Go(func() {
		ticker := time.NewTicker(healthEvery)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
				refresh()
			}
		}
	})

	var sig os.Signal
	select {
	case sig = <-signals:
	case err := <-served:
		log.Error("failed", "reason", fmt.Sprintf("serving stopped: %v", err))
		return 1
	}
	// later signals are logged and ignored: the shutdown below already runs
	go func() {
		for s := range signals {
			log.Info("shutdown_signal_ignored", "signal", s.String(), "reason", "already shutting down")
		}
	}()
	log.Info("shutdown_started", "signal", sig.String())
	healthMu.Lock()
	service.Stop()
	healthServer.Shutdown() // NOT_SERVING to every Check and Watch
	metrics.Serving.Set(0)
	healthMu.Unlock()
	streams := hub.EndAll(codes.Unavailable, ShuttingDown, "shutdown")
	time.AfterFunc(watchGrace, func() { close(stopWatches) })

	// GracefulStop waits for every RPC in flight; bounded by a timer, then Stop cuts the rest.
	// The upstream stays connected meanwhile: a unary call in flight is still waiting for its
	// answer from the exchange (rule C10).
	stopped := make(chan struct{})
	go func() {
		server.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(drainFor)
	cut := false
	select {
	case <-stopped:
		timer.Stop()
	case <-timer.C:
		cut = true
		server.Stop()
		<-stopped
	}
	cancel()
	upstream.Stop()
	hub.Close()
	if metricsServer != nil {
		shutdownCtx, done := context.WithTimeout(context.Background(), time.Second)
		_ = metricsServer.Shutdown(shutdownCtx)
		done()
	}
	background.Wait()
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Warning("serve_ended", "reason", err.Error())
	}
	log.Info("shutdown_complete", "streams_ended", streams, "calls_cut", cut)
	return 0
}
