package connector

import (
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

func newTestHub(t *testing.T) *Hub {
	t.Helper()
	return NewHub(NewLogger(io.Discard, LevelError), NewMetrics(prometheus.NewRegistry()))
}

// collector is a Sender that records what it was handed, optionally blocking until released.
type collector struct {
	mu      sync.Mutex
	got     []string
	release chan struct{}
}

func (c *collector) send(f *contract.Frame) error {
	if c.release != nil {
		<-c.release
	}
	c.mu.Lock()
	c.got = append(c.got, string(f.Bytes))
	c.mu.Unlock()
	return nil
}

func (c *collector) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		if len(c.got) >= n {
			out := append([]string(nil), c.got...)
			c.mu.Unlock()
			return out
		}
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t.Fatalf("expected %d updates, got %d", n, len(c.got))
	return nil
}

func frame(s string) *contract.Frame { return &contract.Frame{Bytes: []byte(s)} }

func TestFanOutReachesEverySubscriberInOrder(t *testing.T) {
	hub := newTestHub(t)
	var subs []*Subscriber
	var sinks []*collector
	for range 3 {
		s := hub.Add(TopicAccount, "", "test")
		c := &collector{}
		go s.Pump(c.send)
		subs, sinks = append(subs, s), append(sinks, c)
	}
	want := []string{"a1", "a2", "a3", "a4"}
	for _, u := range want {
		hub.Publish(TopicAccount, frame(u), "", time.Now())
	}
	for i, c := range sinks {
		got := c.wait(t, len(want))
		for j := range want {
			if got[j] != want[j] {
				t.Fatalf("subscriber %d: expected %v, got %v", i, want, got)
			}
		}
	}
	if n := hub.EndAll(codes.Unavailable, ShuttingDown, "test"); n != 3 {
		t.Fatalf("expected EndAll to end 3 subscribers, got %d", n)
	}
	for _, s := range subs {
		<-s.Done()
		if status.Code(s.Status()) != codes.Unavailable {
			t.Fatalf("expected UNAVAILABLE, got %v", s.Status())
		}
	}
}

func TestSymbolFilterIsExactAndEmptyMeansAll(t *testing.T) {
	hub := newTestHub(t)
	btc, all := &collector{}, &collector{}
	go hub.Add(TopicPositions, "BTCUSDT", "test").Pump(btc.send)
	go hub.Add(TopicPositions, "", "test").Pump(all.send)
	for _, sym := range []string{"ETHUSDT", "BTCUSDT", "BTCUSDTX", "BTCUSDT"} {
		hub.Publish(TopicPositions, frame(sym), sym, time.Now())
	}
	if got := all.wait(t, 4); len(got) != 4 {
		t.Fatalf("expected every symbol for the empty filter, got %v", got)
	}
	got := btc.wait(t, 2)
	time.Sleep(50 * time.Millisecond)
	btc.mu.Lock()
	defer btc.mu.Unlock()
	if len(btc.got) != 2 || got[0] != "BTCUSDT" || got[1] != "BTCUSDT" {
		t.Fatalf("expected only BTCUSDT twice, got %v", btc.got)
	}
	hub.EndAll(codes.Unavailable, ShuttingDown, "test")
}

func TestIgnoreSymbolFilterFault(t *testing.T) {
	hub := newTestHub(t)
	hub.IgnoreSymbolFilter = true
	c := &collector{}
	go hub.Add(TopicPositions, "BTCUSDT", "test").Pump(c.send)
	hub.Publish(TopicPositions, frame("ETHUSDT"), "ETHUSDT", time.Now())
	if got := c.wait(t, 1); got[0] != "ETHUSDT" {
		t.Fatalf("expected the fault to forward ETHUSDT, got %v", got)
	}
	hub.EndAll(codes.Unavailable, ShuttingDown, "test")
}

func TestSlowSubscriberIsDroppedAtTheQueueLimitAndOthersKeepEverything(t *testing.T) {
	hub := newTestHub(t)
	slow := &collector{release: make(chan struct{})}
	fast := &collector{}
	slowSub := hub.Add(TopicAccount, "", "slow")
	go slowSub.Pump(slow.send)
	go hub.Add(TopicAccount, "", "fast").Pump(fast.send)
	total := QueueLimit + 10
	for i := range total {
		hub.Publish(TopicAccount, frame(string(rune('a'+i%26))), "", time.Now())
		if i%100 == 99 {
			fast.wait(t, i+1) // the fast reader keeps up
		}
	}
	select {
	case <-slowSub.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("expected the slow subscriber to be dropped past the queue limit")
	}
	if status.Code(slowSub.Status()) != codes.ResourceExhausted {
		t.Fatalf("expected RESOURCE_EXHAUSTED, got %v", slowSub.Status())
	}
	close(slow.release)
	fast.wait(t, total)
	hub.EndAll(codes.Unavailable, ShuttingDown, "test")
}

func TestLagDropsAStuckSubscriberButNotAfterAStall(t *testing.T) {
	hub := newTestHub(t)
	stuck := &collector{release: make(chan struct{})}
	defer close(stuck.release)
	s := hub.Add(TopicAccount, "", "stuck")
	go s.Pump(stuck.send)
	read := time.Now()
	hub.Publish(TopicAccount, frame("x"), "", read)
	hub.Publish(TopicAccount, frame("y"), "", read)

	hub.mu.Lock()
	hub.stallAt = read.Add(1500 * time.Millisecond) // the process stood still just now
	hub.stalls = []stall{{from: read.Add(100 * time.Millisecond), to: read.Add(1500 * time.Millisecond)}}
	hub.mu.Unlock()
	hub.checkLag(read.Add(1600 * time.Millisecond))
	select {
	case <-s.Done():
		t.Fatal("expected no drop within the lag bound after a stall (C40)")
	default:
	}
	hub.checkLag(read.Add(2600 * time.Millisecond))
	select {
	case <-s.Done():
	default:
		t.Fatal("expected the stuck subscriber to be dropped once its oldest update waited past the lag bound")
	}
	if status.Code(s.Status()) != codes.ResourceExhausted {
		t.Fatalf("expected RESOURCE_EXHAUSTED, got %v", s.Status())
	}
}

// An update handed to the transport still waits until its bytes are on the wire: a subscriber
// whose handed updates stay unwritten past the lag bound is dropped, one whose are written is not.
func TestHandedUpdatesWaitUntilWritten(t *testing.T) {
	hub := newTestHub(t)
	var stuckWritten, movingWritten atomic.Int64
	stuck := hub.Add(TopicAccount, "", "stuck")
	moving := hub.Add(TopicAccount, "", "moving")
	stuck.Wired(stuckWritten.Load)
	moving.Wired(movingWritten.Load)
	handOut := func(s *Subscriber, written *atomic.Int64, onWire bool) (Sender, *collector) {
		c, handed := &collector{}, int64(0)
		return func(f *contract.Frame) error {
			handed += int64(len(f.Bytes) + 5)
			s.Handed(handed)
			if onWire {
				written.Store(handed)
			}
			return c.send(f)
		}, c
	}
	stuckSend, stuckGot := handOut(stuck, &stuckWritten, false)
	movingSend, movingGot := handOut(moving, &movingWritten, true)
	go stuck.Pump(stuckSend)
	go moving.Pump(movingSend)
	read := time.Now()
	hub.Publish(TopicAccount, frame("x"), "", read)
	hub.Publish(TopicAccount, frame("y"), "", read)
	stuckGot.wait(t, 2) // both handed: its queue is empty
	movingGot.wait(t, 2)
	if wait, waiting := stuck.oldestWait(read.Add(300 * time.Millisecond)); waiting != 2 || wait != 300*time.Millisecond {
		t.Fatalf("expected 2 handed updates waiting 300 ms, got %d waiting %v", waiting, wait)
	}
	hub.checkLag(read.Add(1200 * time.Millisecond))
	select {
	case <-stuck.Done():
	default:
		t.Fatal("expected the subscriber whose handed updates are not on the wire dropped past the lag bound")
	}
	select {
	case <-moving.Done():
		t.Fatal("expected the subscriber whose updates are on the wire kept")
	default:
	}
	hub.EndAll(codes.Unavailable, ShuttingDown, "test")
}

// Stalls pardon only their own time: a subscriber whose update waited past the lag bound besides
// a stall is dropped even just after the stall (stalls that keep coming back must not let a
// backlog rot, C38).
func TestAStallPardonsOnlyItsOwnTime(t *testing.T) {
	hub := newTestHub(t)
	stuck := &collector{release: make(chan struct{})}
	defer close(stuck.release)
	s := hub.Add(TopicAccount, "", "stuck")
	go s.Pump(stuck.send)
	read := time.Now()
	hub.Publish(TopicAccount, frame("x"), "", read)
	hub.mu.Lock()
	hub.stallAt = read.Add(1500 * time.Millisecond)
	hub.stalls = []stall{{from: read.Add(900 * time.Millisecond), to: read.Add(1500 * time.Millisecond)}}
	hub.mu.Unlock()
	hub.checkLag(read.Add(1700 * time.Millisecond)) // waited 1.7 s, 0.6 s of it a stall
	select {
	case <-s.Done():
	default:
		t.Fatal("expected a drop: the update waited 1.1 s besides the stall")
	}
}

func TestSubscriberGaugeFollowsConcurrentAddsAndRemoves(t *testing.T) {
	// each Add and Remove sets the gauge to the count it saw: set after the lock, a smaller count
	// could land last and stay (C15)
	hub := newTestHub(t)
	gauge := hub.metrics.Subscribers.WithLabelValues(TopicPositions)
	for round := 0; round < 200; round++ {
		var wg sync.WaitGroup
		subs := make([]*Subscriber, 8)
		for i := range subs {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				subs[i] = hub.Add(TopicPositions, "", "peer")
			}(i)
		}
		wg.Wait()
		if got := testutil.ToFloat64(gauge); got != 8 {
			t.Fatalf("round %d: expected the gauge at 8 after 8 concurrent adds, got %v", round, got)
		}
		for _, s := range subs[:5] {
			wg.Add(1)
			go func(s *Subscriber) {
				defer wg.Done()
				hub.Remove(s, "client gone")
			}(s)
		}
		wg.Wait()
		if got := testutil.ToFloat64(gauge); got != 3 {
			t.Fatalf("round %d: expected the gauge at 3 after 5 concurrent removes, got %v", round, got)
		}
		for _, s := range subs[5:] {
			hub.Remove(s, "client gone")
		}
	}
}
