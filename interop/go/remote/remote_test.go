package remote

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
)

// exchange is a test server: its first account subscription sends one update and fails with
// UNAVAILABLE; later ones send one update and stay open.
type exchange struct {
	pb.UnimplementedExchangeServiceServer
	mu    sync.Mutex
	opens int
}

func (e *exchange) GetAccount(context.Context, *pb.GetAccountRequest) (*pb.Account, error) {
	return account("1.00"), nil
}

func (e *exchange) SubscribeAccount(_ *pb.SubscribeAccountRequest, stream grpc.ServerStreamingServer[pb.Account]) error {
	e.mu.Lock()
	e.opens++
	n := e.opens
	e.mu.Unlock()
	if err := stream.Send(account("NaN")); err != nil { // breaks the contract: never delivered
		return err
	}
	if err := stream.Send(account("10.00")); err != nil {
		return err
	}
	if n == 1 {
		return status.Error(codes.Unavailable, "boom")
	}
	<-stream.Context().Done()
	return nil
}

func account(balance string) *pb.Account {
	return &pb.Account{TotalBalance: balance, AvailableBalance: "1", Equity: "1", UnrealizedPnl: "0", MarginUsed: "0", MarginLevel: "0", Leverage: "1"}
}

func start(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	pb.RegisterExchangeServiceServer(server, &exchange{})
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return listener.Addr().String()
}

func TestAddressesAreCheckedBeforeAnyIO(t *testing.T) {
	for address, kind := range map[string]Kind{
		"": KindEmptyAddress, "   ": KindEmptyAddress, "localhost": KindInvalidAddress, "localhost:http": KindInvalidAddress,
		"localhost:70000": KindInvalidAddress, "grpc://localhost:1": KindInvalidAddress, "::1:50051": KindInvalidAddress,
		"my host:1": KindInvalidAddress,
	} {
		var e *Error
		if err := CheckAddress(address); !errors.As(err, &e) || e.Kind != kind {
			t.Errorf("expected %q to fail with %s, got %v", address, kind, err)
		}
	}
	for _, address := range []string{"127.0.0.1:50051", "[::1]:50051", "exchange-connector.local:1"} {
		if err := CheckAddress(address); err != nil {
			t.Errorf("expected %q to be accepted, got %v", address, err)
		}
	}
}

func TestConnectTimeoutToASilentPeer(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never speaks
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = listener.Close() }()
	started := time.Now()
	_, err = Dial(context.Background(), listener.Addr().String(), Options{ConnectTimeout: 300 * time.Millisecond})
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindConnectTimeout {
		t.Fatalf("expected connect_timeout, got %v", err)
	}
	if took := time.Since(started); took < 300*time.Millisecond || took > 1300*time.Millisecond {
		t.Fatalf("expected the timeout after 300 ms and within 1 s of it, took %v", took)
	}
}

func TestStreamResubscribesAndTellsItsOwner(t *testing.T) {
	address := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := Dial(ctx, address, Options{Backoff: Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	if a, err := client.GetAccount(ctx); err != nil || a.GetTotalBalance() != "1.00" {
		t.Fatalf("expected GetAccount to answer 1.00, got %v %v", a, err)
	}
	events := make(chan string, 16)
	sub := client.SubscribeAccount(ctx, Callbacks[pb.Account]{
		OnSubscribed:  func() { events <- "subscribed" },
		OnUpdate:      func(a *pb.Account) { events <- "update " + a.GetTotalBalance() },
		OnBreak:       func(b Break) { events <- "break " + CodeName(b.Code) },
		OnReconnected: func() { events <- "reconnected" },
	})
	want := []string{"subscribed", "update 10.00", "break UNAVAILABLE", "reconnected", "update 10.00"}
	for _, w := range want {
		select {
		case got := <-events:
			if got != w {
				t.Fatalf("expected %q, got %q (want %v)", w, got, want)
			}
		case <-ctx.Done():
			t.Fatalf("expected %q, got nothing", w)
		}
	}
	sub.Cancel()
	select {
	case got := <-events:
		t.Fatalf("expected no callback after Cancel returned, got %q", got)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestDeadlineAndCancellation(t *testing.T) {
	address := start(t)
	client, err := Dial(context.Background(), address, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var e *Error
	if _, err := client.GetAccount(ctx); !errors.As(err, &e) || e.Kind != KindCancelled || e.CodeName() != "CANCELLED" {
		t.Fatalf("expected kind cancelled, got %v", err)
	}
}
