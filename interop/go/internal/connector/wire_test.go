package connector

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// discard is a net.Conn whose writes go nowhere.
type discard struct{ net.Conn }

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func frameHeader(length int, kind byte) []byte {
	return []byte{byte(length >> 16), byte(length >> 8), byte(length), kind, 0, 0, 0, 0, 1}
}

func TestWireCountsOnlyDataBytesAcrossWrites(t *testing.T) {
	c := &wireConn{Conn: discard{}, wake: make(chan struct{})}
	headers := append(frameHeader(3, 1), 1, 2, 3)           // HEADERS, 3 bytes
	data := append(frameHeader(10, 0), make([]byte, 10)...) // DATA, 10 bytes
	ping := append(frameHeader(8, 6), make([]byte, 8)...)   // PING
	stream := append(append(append([]byte{}, headers...), data...), ping...)
	for _, cut := range [][2]int{{0, 5}, {5, 14}, {14, 20}, {20, len(stream)}} {
		if _, err := c.Write(stream[cut[0]:cut[1]]); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.written.Load(); got != 10 {
		t.Fatalf("expected 10 DATA bytes counted, got %d", got)
	}
	c.handed.Store(10 + WireBudget + 1)
	done := make(chan struct{})
	close(done)
	if c.waitRoom(done) {
		t.Fatal("expected no room while more than the budget is handed and not written")
	}
}

func TestOverloadShedsWhenManySubscribersLag(t *testing.T) {
	hub := newTestHub(t)
	stuck := &collector{release: make(chan struct{})}
	defer close(stuck.release)
	var subs []*Subscriber
	add := func(n int) {
		for range n {
			s := hub.Add(TopicAccount, "", "stuck")
			go s.Pump(stuck.send)
			subs = append(subs, s)
		}
	}
	read := time.Now()
	add(2) // these two have waited 0.7 s when the hub looks, the six others 0.2 s
	hub.Publish(TopicAccount, frame("x"), "", read)
	add(6)
	hub.Publish(TopicAccount, frame("y"), "", read.Add(500*time.Millisecond))
	time.Sleep(50 * time.Millisecond) // every pump holds its first update
	hub.shed(read.Add(700 * time.Millisecond))
	dropped := 0
	for _, s := range subs {
		select {
		case <-s.Done():
			if status.Code(s.Status()) != codes.ResourceExhausted {
				t.Fatalf("expected RESOURCE_EXHAUSTED, got %v", s.Status())
			}
			dropped++
		default:
		}
	}
	if dropped != 2 {
		t.Fatalf("expected the laggiest quarter (2 of 8) shed, got %d", dropped)
	}
	if !hub.Refusing(read.Add(time.Second)) {
		t.Fatal("expected new subscriptions refused after a shed")
	}
	hub.EndAll(codes.Unavailable, ShuttingDown, "test")
}

// flood serves one stream method that sends 2,000 messages of 100 bytes on the wire each, handed
// only while the stream's own budget has room, and reports each stream's id and tracker.
func flood(t *testing.T) (*grpc.ClientConn, chan *wireStream, chan uint32) {
	t.Helper()
	wire := &Wire{}
	streams, ids := make(chan *wireStream, 2), make(chan uint32, 2)
	handler := func(_ any, stream grpc.ServerStream) error {
		ctx := stream.Context()
		if err := stream.RecvMsg(&contract.Frame{}); err != nil {
			return err
		}
		id, conn := streamID(ctx), wireOf(ctx)
		if id == 0 || conn == nil {
			return status.Error(codes.Internal, "stream not tracked")
		}
		s := conn.Stream(id)
		defer conn.Forget(id)
		ids <- id
		streams <- s
		message := &contract.Frame{Bytes: make([]byte, 95)}
		for range 2000 {
			if !s.waitRoom(ctx.Done()) {
				return ctx.Err()
			}
			s.Hand(100)
			if err := stream.SendMsg(message); err != nil {
				return err
			}
		}
		return nil
	}
	server := grpc.NewServer(grpc.ForceServerCodecV2(contract.NewCodec()),
		grpc.Creds(wire.Credentials(insecure.NewCredentials())), grpc.StatsHandler(wire.StatsHandler()))
	server.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.Wire",
		HandlerType: (*any)(nil),
		Streams:     []grpc.StreamDesc{{StreamName: "Flood", ServerStreams: true, Handler: handler}},
	}, nil)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(listener) }()
	conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(contract.NewCodec())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		server.Stop()
	})
	return conn, streams, ids
}

func openFlood(t *testing.T, ctx context.Context, conn *grpc.ClientConn) grpc.ClientStream {
	t.Helper()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/test.Wire/Flood")
	if err == nil {
		err = stream.SendMsg(&contract.Frame{})
	}
	if err == nil {
		err = stream.CloseSend()
	}
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// Two streams of one connection: one never read, one read to the end. The unread one holds at
// most its own budget handed and not written; the read one gets everything (under one budget for
// the connection, the unread stream would take all of it and starve the other).
func TestStreamsOfOneConnectionHaveBudgetsOfTheirOwn(t *testing.T) {
	conn, streams, ids := flood(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	openFlood(t, ctx, conn) // never read
	stuck := <-streams
	first := <-ids
	read := openFlood(t, ctx, conn)
	second := <-ids
	if first == 0 || second == 0 || first == second {
		t.Fatalf("expected two distinct HTTP/2 stream ids, got %d and %d", first, second)
	}
	got := 0
	for {
		if err := read.RecvMsg(&contract.Frame{}); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("expected the read stream to end cleanly after %d messages, got %v", got, err)
			}
			break
		}
		got++
	}
	if got != 2000 {
		t.Fatalf("expected 2000 messages on the read stream, got %d", got)
	}
	if held := stuck.handed.Load() - stuck.Written(); held > WireBudget+100 || stuck.handed.Load() >= 2000*100 {
		t.Fatalf("expected the unread stream held back within its budget, got %d bytes handed and not written of %d handed",
			held, stuck.handed.Load())
	}
}
