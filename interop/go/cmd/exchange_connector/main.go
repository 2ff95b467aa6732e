// Command exchange_connector serves opensqt.exchange.v1.ExchangeService to many clients from one
// upstream exchange connection (docs/sut-manifest.md, rules C1-C64).
//
//	exchange_connector serve --listen H:P --upstream H:P [--metrics-listen H:P]
//	    [--tls-cert F --tls-key F] [--token T | --token-file F] [--upstream-token T] [--log-level L]
//	exchange_connector health --address H:P [--tls-ca F] [--timeout S]   (exit 0 only when SERVING)
//
// A bad flag exits 2 with one line naming it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/opensqt/grpc-conformance/interop/go/internal/connector"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func usage(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "exchange_connector: "+format+"\n", args...)
	return 2
}

func hostPort(flagName, value string) error {
	host, port, err := net.SplitHostPort(value)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("%s: expected host:port, got %q", flagName, value)
	}
	return nil
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "health" {
		return probe(args[1:])
	}
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	flags := flag.NewFlagSet("serve", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	var opts connector.Options
	var tokenFile, logLevel string
	flags.StringVar(&opts.Listen, "listen", "", "host:port to serve on")
	flags.StringVar(&opts.Upstream, "upstream", "", "host:port of the exchange (an ExchangeService)")
	flags.StringVar(&opts.MetricsListen, "metrics-listen", "", "host:port of the Prometheus /metrics endpoint")
	flags.StringVar(&opts.TLSCert, "tls-cert", "", "server certificate (PEM)")
	flags.StringVar(&opts.TLSKey, "tls-key", "", "server key (PEM)")
	flags.StringVar(&opts.Token, "token", "", "bearer token every client must send")
	flags.StringVar(&tokenFile, "token-file", "", "file holding the bearer token")
	flags.StringVar(&opts.UpstreamToken, "upstream-token", os.Getenv("EXCHANGE_CONNECTOR_UPSTREAM_TOKEN"), "bearer token sent to the exchange")
	flags.StringVar(&logLevel, "log-level", os.Getenv("LOG_LEVEL"), "debug, info, warning or error")
	if err := flags.Parse(args); err != nil {
		return usage("%v", err)
	}
	if flags.NArg() > 0 {
		return usage("unexpected argument %s", flags.Arg(0))
	}
	for name, value := range map[string]string{"--listen": opts.Listen, "--upstream": opts.Upstream} {
		if err := hostPort(name, value); err != nil {
			return usage("%v", err)
		}
	}
	if opts.MetricsListen != "" {
		if err := hostPort("--metrics-listen", opts.MetricsListen); err != nil {
			return usage("%v", err)
		}
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return usage("--tls-cert and --tls-key go together")
	}
	if opts.Token != "" && tokenFile != "" {
		return usage("--token and --token-file: give the token one way")
	}
	if tokenFile != "" {
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return usage("--token-file: %v", err)
		}
		opts.Token = strings.TrimSpace(string(data))
		if opts.Token == "" {
			return usage("--token-file: %s is empty", tokenFile)
		}
	}
	opts.LogLevel = connector.ParseLevel(logLevel)
	opts.Fault = os.Getenv("EXCHANGE_CONNECTOR_FAULT")
	return connector.Serve(opts)
}

// probe asks grpc.health.v1 Check once; it exits 0 only when the answer is SERVING.
func probe(args []string) int {
	flags := flag.NewFlagSet("health", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	address := flags.String("address", "", "host:port of the connector")
	ca := flags.String("tls-ca", "", "CA certificate (PEM): use TLS")
	timeout := flags.Duration("timeout", 3*time.Second, "how long to wait")
	if err := flags.Parse(args); err != nil {
		return usage("%v", err)
	}
	if *address == "" && flags.NArg() == 1 {
		*address = flags.Arg(0)
	}
	if err := hostPort("--address", *address); err != nil {
		return usage("%v", err)
	}
	creds := insecure.NewCredentials()
	if *ca != "" {
		c, err := credentials.NewClientTLSFromFile(*ca, "")
		if err != nil {
			return usage("--tls-ca: %v", err)
		}
		creds = c
	}
	conn, err := grpc.NewClient("passthrough:///"+*address, grpc.WithTransportCredentials(creds))
	if err != nil {
		fmt.Printf("not healthy: %v\n", err)
		return 1
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	answer, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		fmt.Printf("not healthy: %v\n", err)
		return 1
	}
	if answer.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		fmt.Printf("not healthy: %s\n", answer.GetStatus())
		return 1
	}
	return 0
}
