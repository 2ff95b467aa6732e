package connector

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// serve starts the service (with a token) on a loopback port; the upstream is never dialled.
func serve(t *testing.T, token string) (*Service, *grpc.ClientConn) {
	t.Helper()
	log := NewLogger(io.Discard, LevelError)
	metrics := NewMetrics(prometheus.NewRegistry())
	hub := NewHub(log, metrics)
	upstream, err := NewUpstream("127.0.0.1:1", "", hub, log, metrics)
	if err != nil {
		t.Fatal(err)
	}
	service := NewService(upstream, hub, log, metrics, token)
	server := grpc.NewServer(grpc.ForceServerCodecV2(contract.NewCodec()))
	server.RegisterService(service.Desc(), service)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(listener) }()
	conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		server.Stop()
		upstream.Stop()
	})
	return service, conn
}

func TestTokenIsRequiredAndCounted(t *testing.T) {
	service, conn := serve(t, "s3cret")
	client := pb.NewExchangeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	_, err := client.GetAccount(ctx, &pb.GetAccountRequest{})
	if status.Code(err) != codes.Unauthenticated || !containsToken(err) {
		t.Fatalf("expected UNAUTHENTICATED about the token without one, got %v", err)
	}
	bad := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer wrong")
	if _, err := client.GetPositions(bad, &pb.GetPositionsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expected UNAUTHENTICATED with a wrong token, got %v", err)
	}
	good := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret")
	// the right token passes authentication: the upstream is not connected, so UNAVAILABLE
	if _, err := client.GetAccount(good, &pb.GetAccountRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("expected the right token to pass (then UNAVAILABLE: no upstream), got %v", err)
	}
	stream, err := client.SubscribeAccount(bad, &pb.SubscribeAccountRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expected a stream with a wrong token to be refused UNAUTHENTICATED, got %v", err)
	}
	if got := testutil.ToFloat64(service.Metrics.AuthRejected.WithLabelValues("missing")); got != 1 {
		t.Fatalf("expected 1 missing-token refusal counted, got %v", got)
	}
	if got := testutil.ToFloat64(service.Metrics.AuthRejected.WithLabelValues("invalid")); got != 2 {
		t.Fatalf("expected 2 invalid-token refusals counted, got %v", got)
	}
}

func containsToken(err error) bool {
	s, _ := status.FromError(err)
	for i := 0; i+5 <= len(s.Message()); i++ {
		if s.Message()[i:i+5] == "token" {
			return true
		}
	}
	return false
}

func TestMalformedRequestIsInvalidArgumentNotInternal(t *testing.T) {
	service, conn := serve(t, "s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// field 1 (symbol), length 2, bytes that are not UTF-8
	corrupt := &contract.Frame{Bytes: []byte{0x0a, 0x02, 0xff, 0xfe}}
	var answer contract.Frame
	err := conn.Invoke(ctx, pb.ExchangeService_GetPositions_FullMethodName, corrupt, &answer, grpc.ForceCodecV2(contract.NewCodec()))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("expected INVALID_ARGUMENT for a string that is not UTF-8 (without a token), got %v", err)
	}
	if got := testutil.ToFloat64(service.Metrics.Malformed.WithLabelValues("GetPositions")); got != 1 {
		t.Fatalf("expected the malformed request counted, got %v", got)
	}
}

func TestBadSymbolIsInvalidArgument(t *testing.T) {
	_, conn := serve(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := pb.NewExchangeServiceClient(conn).GetPositions(ctx, &pb.GetPositionsRequest{Symbol: "btc-usdt"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("expected INVALID_ARGUMENT for btc-usdt, got %v", err)
	}
}

func TestBearerIsParsedStrictly(t *testing.T) {
	for value, want := range map[string]bool{
		"Bearer s3cret": true, "bearer s3cret": true, "BEARER s3cret": true,
		"Bearer s3cret2": false, "Bearer s3cre": false, "Bearer S3CRET": false, "s3cret": false,
		"Basic s3cret": false, " Bearer s3cret": false, "Bearer s3cret ": false, "Bearer  s3cret": false,
	} {
		if got := bearer(value, "s3cret"); got != want {
			t.Errorf("expected bearer(%q) = %v, got %v", value, want, got)
		}
	}
}
