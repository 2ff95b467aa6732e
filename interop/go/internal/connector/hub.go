package connector

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// Topics of the hub.
const (
	TopicAccount   = "account"
	TopicPositions = "positions"
)

// Bounds of the fan-out (rules C13, C34, C38, C40).
const (
	QueueLimit       = 1024                   // updates waiting for one subscriber before it is dropped
	LagLimit         = time.Second            // the oldest update not yet taken by the transport
	checkEvery       = 100 * time.Millisecond // the lag check, and the heartbeat that notices stalls
	stallAfter       = 500 * time.Millisecond // a tick this late, with almost no CPU meanwhile, is a stall
	shedEvery        = 250 * time.Millisecond
	overloadLag      = 500 * time.Millisecond // upstream lag past which subscribers are shed
	refuseAfterShed  = 3 * time.Second        // new subscriptions refused this long after the last shed
	noShedAfterStall = 500 * time.Millisecond
	keepStalls       = time.Minute // stalls remembered to pardon the waits that span them
)

// stall is a time the connector's process stood still (C40).
type stall struct{ from, to time.Time }

type item struct {
	frame  *contract.Frame
	readAt time.Time
}

// handed is an update handed to the transport, not known to be on the wire yet.
type handed struct {
	end    int64 // the stream's bytes handed, up to and with this update
	readAt time.Time
}

// Sender writes one encoded update to a subscriber's stream; it blocks while the transport
// holds the stream back (grpc.ServerStream.SendMsg).
type Sender func(*contract.Frame) error

// Subscriber is one client stream: its own queue, drained by its own goroutine.
type Subscriber struct {
	hub    *Hub
	Topic  string
	Symbol string
	Peer   string

	mu        sync.Mutex
	queue     []item
	sending   bool
	sendingAt time.Time // readAt of the update in SendMsg
	ended     bool
	status    error
	// written is how many of the stream's bytes are on the wire, nil when unknown; updates handed
	// and not yet written still wait (wire.go)
	written   func() int64
	unwritten []handed

	wake chan struct{}
	done chan struct{}
}

// Done is closed when the subscriber has ended (dropped, the upstream lost, shutdown).
func (s *Subscriber) Done() <-chan struct{} { return s.done }

// Status is the status the stream ends with, once Done is closed.
func (s *Subscriber) Status() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Subscriber) wants(symbol string) bool {
	return s.Topic == TopicAccount || s.Symbol == "" || s.Symbol == symbol
}

// Wired makes the updates handed to the stream wait until written says they are on the wire;
// call it before Pump.
func (s *Subscriber) Wired(written func() int64) {
	s.mu.Lock()
	s.written = written
	s.mu.Unlock()
}

// Handed records that the update being sent ends at byte end of its stream.
func (s *Subscriber) Handed(end int64) {
	s.mu.Lock()
	if !s.ended && s.written != nil {
		s.unwritten = append(s.unwritten, handed{end: end, readAt: s.sendingAt})
	}
	s.mu.Unlock()
}

// trimLocked forgets the handed updates that are on the wire.
func (s *Subscriber) trimLocked() {
	if len(s.unwritten) == 0 || s.written == nil {
		return
	}
	written := s.written()
	n := 0
	for n < len(s.unwritten) && s.unwritten[n].end <= written {
		n++
	}
	if n == len(s.unwritten) {
		s.unwritten = s.unwritten[:0]
	} else {
		s.unwritten = s.unwritten[n:]
	}
}

// waitingLocked is how many updates wait for the subscriber and since when the oldest has.
func (s *Subscriber) waitingLocked() (int, time.Time) {
	s.trimLocked()
	waiting := len(s.queue) + len(s.unwritten)
	var oldest time.Time
	switch {
	case len(s.unwritten) > 0:
		oldest = s.unwritten[0].readAt
	case s.sending:
		oldest = s.sendingAt
	case len(s.queue) > 0:
		oldest = s.queue[0].readAt
	}
	if s.sending {
		waiting++
	}
	return waiting, oldest
}

func (s *Subscriber) offer(it item) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, it)
	waiting, _ := s.waitingLocked()
	s.mu.Unlock()
	if waiting > QueueLimit {
		s.hub.drop(s, fmt.Sprintf("%d updates waiting (queue limit %d)", waiting, QueueLimit))
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Pump hands the queued updates to send in order until the subscriber ends or send fails.
func (s *Subscriber) Pump(send Sender) {
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.ended {
			s.mu.Unlock()
			select {
			case <-s.wake:
			case <-s.done:
			}
			s.mu.Lock()
		}
		if s.ended {
			s.mu.Unlock()
			return
		}
		it := s.queue[0]
		s.queue[0] = item{}
		s.queue = s.queue[1:]
		s.sending, s.sendingAt = true, it.readAt
		s.mu.Unlock()
		err := send(it.frame)
		s.mu.Lock()
		s.sending = false
		s.mu.Unlock()
		if err != nil {
			s.hub.Remove(s, "send failed: "+err.Error())
			return
		}
		s.hub.metrics.Sent.WithLabelValues(s.Topic).Inc()
	}
}

// oldestWait is how long the oldest update not yet on the wire (or, where that is not known,
// not yet taken by the transport) has waited, less the time the connector itself stood still
// meanwhile (C40).
func (s *Subscriber) oldestWait(now time.Time) (time.Duration, int) {
	s.mu.Lock()
	waiting, oldest := s.waitingLocked()
	s.mu.Unlock()
	if oldest.IsZero() {
		return 0, waiting
	}
	return now.Sub(oldest) - s.hub.stoodStill(oldest, now), waiting
}

// end marks the subscriber ended with err; it reports whether this call ended it.
func (s *Subscriber) end(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false
	}
	s.ended = true
	s.status = err
	s.queue = nil
	s.unwritten = nil
	close(s.done)
	return true
}

// Hub fans every update read upstream out to the subscribers of its topic (rules C4, C5, C13,
// C34, C38, C40). Fault "ignore-symbol-filter" makes it send every position to every subscriber.
type Hub struct {
	log     *Logger
	metrics *Metrics
	// LagOf is the upstream lag while updates flow (0 otherwise): the overload signal of C38.
	LagOf func() time.Duration
	// IgnoreSymbolFilter is the fault switch of the suite's faulty-SUT set: no symbol filter.
	IgnoreSymbolFilter bool

	mu         sync.Mutex
	subs       map[string]map[*Subscriber]struct{}
	stallAt    time.Time
	stalls     []stall
	lastShed   time.Time
	overloaded bool
	lagDrops   int // subscribers dropped for lag or queue since the last shed check
	stop       chan struct{}
	stopOnce   sync.Once
	cpu        func() time.Duration
}

// NewHub returns a hub; Run starts its lag check.
func NewHub(log *Logger, metrics *Metrics) *Hub {
	return &Hub{
		log:     log,
		metrics: metrics,
		LagOf:   func() time.Duration { return 0 },
		subs:    map[string]map[*Subscriber]struct{}{TopicAccount: {}, TopicPositions: {}},
		stop:    make(chan struct{}),
		cpu:     processCPU,
	}
}

// Add registers a subscriber of topic (symbol: "" for every symbol).
func (h *Hub) Add(topic, symbol, peer string) *Subscriber {
	if h.IgnoreSymbolFilter {
		symbol = ""
	}
	s := &Subscriber{hub: h, Topic: topic, Symbol: symbol, Peer: peer, wake: make(chan struct{}, 1), done: make(chan struct{})}
	h.mu.Lock()
	h.subs[topic][s] = struct{}{}
	// set under the lock: two Adds setting their counts after it could leave the smaller one last
	h.metrics.Subscribers.WithLabelValues(topic).Set(float64(len(h.subs[topic])))
	h.mu.Unlock()
	h.log.Info("subscriber_added", "topic", topic, "peer", peer, "symbol", symbol)
	return s
}

// Remove forgets a subscriber that left (its client went away, or its stream failed).
func (h *Hub) Remove(s *Subscriber, reason string) {
	s.end(status.Error(codes.Canceled, reason))
	h.forget(s, reason)
}

func (h *Hub) forget(s *Subscriber, reason string) {
	h.mu.Lock()
	_, ok := h.subs[s.Topic][s]
	delete(h.subs[s.Topic], s)
	if ok {
		h.metrics.Subscribers.WithLabelValues(s.Topic).Set(float64(len(h.subs[s.Topic])))
	}
	h.mu.Unlock()
	if !ok {
		return
	}
	h.log.Info("subscriber_removed", "topic", s.Topic, "peer", s.Peer, "reason", reason)
}

func (h *Hub) drop(s *Subscriber, why string) {
	err := status.Errorf(codes.ResourceExhausted,
		"subscriber fell too far behind and was dropped: %s; resynchronise with GetAccount/GetPositions", why)
	if !s.end(err) {
		return
	}
	if !strings.HasPrefix(why, "the connector is overloaded") {
		h.mu.Lock()
		h.lagDrops++
		h.mu.Unlock()
	}
	h.metrics.Dropped.WithLabelValues(s.Topic).Inc()
	h.log.Warning("subscriber_dropped", "topic", s.Topic, "peer", s.Peer, "symbol", s.Symbol, "queue_size", QueueLimit, "reason", why)
	h.forget(s, "dropped")
}

// Publish offers one update to every subscriber of topic that wants symbol.
func (h *Hub) Publish(topic string, frame *contract.Frame, symbol string, readAt time.Time) {
	h.mu.Lock()
	targets := make([]*Subscriber, 0, len(h.subs[topic]))
	for s := range h.subs[topic] {
		if s.wants(symbol) {
			targets = append(targets, s)
		}
	}
	h.mu.Unlock()
	it := item{frame: frame, readAt: readAt}
	for _, s := range targets {
		s.offer(it)
	}
}

// EndAll ends every stream with code and details; it returns how many it ended.
func (h *Hub) EndAll(code codes.Code, details, reason string) int {
	h.mu.Lock()
	var all []*Subscriber
	for _, set := range h.subs {
		for s := range set {
			all = append(all, s)
		}
	}
	h.mu.Unlock()
	ended := 0
	for _, s := range all {
		if s.end(status.Error(code, details)) {
			ended++
		}
		h.forget(s, reason)
	}
	return ended
}

// Count is the number of subscribers held now.
func (h *Hub) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs[TopicAccount]) + len(h.subs[TopicPositions])
}

// Refusing reports whether new subscriptions are refused because the hub is shedding (C38).
func (h *Hub) Refusing(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.overloaded || (!h.lastShed.IsZero() && now.Sub(h.lastShed) < refuseAfterShed)
}

// Run checks lags, notices stalls and sheds under overload until Close.
func (h *Hub) Run() {
	ticker := time.NewTicker(checkEvery)
	defer ticker.Stop()
	lastTick, lastCPU, lastShedCheck := time.Now(), h.cpu(), time.Now()
	for {
		select {
		case <-h.stop:
			return
		case <-ticker.C:
		}
		now, cpu := time.Now(), h.cpu()
		if gap := now.Sub(lastTick); gap > stallAfter && cpu-lastCPU < gap/5 {
			h.mu.Lock()
			h.stallAt = now
			h.stalls = append(h.stalls, stall{from: lastTick, to: now})
			for len(h.stalls) > 0 && now.Sub(h.stalls[0].to) > keepStalls {
				h.stalls = h.stalls[1:]
			}
			h.mu.Unlock()
			h.metrics.Stalls.Inc()
			h.log.Warning("stalled", "gap_ms", gap.Milliseconds(), "cpu_ms", (cpu - lastCPU).Milliseconds())
		}
		lastTick, lastCPU = now, cpu
		h.checkLag(now)
		if now.Sub(lastShedCheck) >= shedEvery {
			lastShedCheck = now
			h.shed(now)
		}
	}
}

func (h *Hub) all() []*Subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Subscriber, 0, len(h.subs[TopicAccount])+len(h.subs[TopicPositions]))
	for _, set := range h.subs {
		for s := range set {
			out = append(out, s)
		}
	}
	return out
}

func (h *Hub) sinceStall(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stallAt.IsZero() {
		return time.Hour
	}
	return now.Sub(h.stallAt)
}

// stoodStill is how much of the time from since to now the connector stood still.
func (h *Hub) stoodStill(since, now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	var still time.Duration
	for _, st := range h.stalls {
		if from, to := later(st.from, since), earlier(st.to, now); to.After(from) {
			still += to.Sub(from)
		}
	}
	return still
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// checkLag drops the subscribers whose oldest update has waited past LagLimit. The connector's
// own stalls are nobody's lag (C40): a wait is counted less the stalls it spans, and no more, so
// that stalls that keep coming (a host that starves the process) do not let a backlog rot (C38).
func (h *Hub) checkLag(now time.Time) {
	for _, s := range h.all() {
		if wait, _ := s.oldestWait(now); wait > LagLimit {
			h.drop(s, fmt.Sprintf("an update waited %d ms to be sent (lag limit %d ms)", wait.Milliseconds(), LagLimit.Milliseconds()))
		}
	}
}

// shed is the overload rule (C38). The connector is overloaded when its upstream read trails
// the exchange by more than overloadLag, or when it cannot deliver: at least two subscribers,
// and a quarter of them, have an update waiting longer than overloadLag, or lag drops ended two
// subscribers or more since the last check. While overloaded it ends the laggiest quarter of the
// subscribers with updates waiting, and every one whose oldest update has waited past
// overloadLag, every shedEvery, and refuses new subscriptions until
// refuseAfterShed after the last time it was, so that the clients it dropped (which come straight
// back) cannot bring the overload back. Its own stalls are nobody's overload (C40): the waits
// leave them out, and upstream lag is not read for a moment after one.
func (h *Hub) shed(now time.Time) {
	lag := h.LagOf()
	sinceStall := h.sinceStall(now)
	all := h.all()
	type behind struct {
		s    *Subscriber
		wait time.Duration
	}
	var late []behind
	lagging := 0
	for _, s := range all {
		if wait, waiting := s.oldestWait(now); waiting > 0 {
			late = append(late, behind{s, wait})
			if wait > overloadLag {
				lagging++
			}
		}
	}
	h.mu.Lock()
	lagDrops := h.lagDrops
	h.lagDrops = 0
	h.mu.Unlock()
	why := ""
	switch {
	case lag > overloadLag && sinceStall >= noShedAfterStall:
		why = fmt.Sprintf("its upstream read trails by %d ms (shed at %d ms)", lag.Milliseconds(), overloadLag.Milliseconds())
	case lagging >= 2 && 4*lagging >= len(all):
		why = fmt.Sprintf("%d of its %d subscribers have updates waiting over %d ms", lagging, len(all), overloadLag.Milliseconds())
	case lagDrops >= 2:
		why = fmt.Sprintf("%d subscribers fell behind within %d ms", lagDrops, shedEvery.Milliseconds())
	}
	h.mu.Lock()
	h.overloaded = why != ""
	if h.overloaded {
		h.lastShed = now
	}
	h.mu.Unlock()
	if why == "" {
		return
	}
	sort.Slice(late, func(i, j int) bool { return late[i].wait > late[j].wait })
	count := min(len(late), (len(all)+3)/4)
	for i, b := range late {
		// the laggiest quarter, and while overloaded every subscriber past the overload lag
		if i >= count && b.wait <= overloadLag {
			break
		}
		h.drop(b.s, "the connector is overloaded: "+why)
	}
}

// Close stops Run.
func (h *Hub) Close() { h.stopOnce.Do(func() { close(h.stop) }) }

// processCPU is the CPU time the process has used (user and system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
