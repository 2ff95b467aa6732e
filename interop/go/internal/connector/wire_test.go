package connector

import (
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
