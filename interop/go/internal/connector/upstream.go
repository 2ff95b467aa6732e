package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// Bounds of the upstream connection (rules C9, C30, C31, C33).
const (
	StaleAfter       = 5 * time.Second // the data-age and lag bound of C30
	livenessAfter    = time.Second     // silence after which the exchange is asked (C33)
	livenessDeadline = 2 * time.Second
	attemptDeadline  = 5 * time.Second // a connection attempt not live by then is retried
	backoffFirst     = 100 * time.Millisecond
	backoffMax       = 2 * time.Second // well under C9's 15 s (grpc-go's own default grows to 120 s)
	stableAfter      = 5 * time.Second // up this long, the backoff starts again from the first step
	watchEvery       = 250 * time.Millisecond
)

const (
	stateConnecting = "connecting"
	stateUp         = "up"
	stateDown       = "down"
	stateStopped    = "stopped"
)

// Upstream is the one connection to the exchange: both subscriptions opened at start-up and
// held (C2, C3), the connector's view of the account with its freshness figures (C30, C32, C33),
// the watchdog for a hung exchange (C31), and reconnection with backoff (C9).
type Upstream struct {
	Address string
	conn    *grpc.ClientConn
	client  pb.ExchangeServiceClient
	hub     *Hub
	log     *Logger
	metrics *Metrics
	token   string
	// OnChange is called when the connection's state changes (health follows it).
	OnChange func()

	mu             sync.Mutex
	state          string
	account        *contract.Frame
	accountReadAt  time.Time
	accountProblem string
	lastSignOfLife time.Time
	minOffset      time.Duration
	haveOffset     bool
	newestStamp    time.Time
	lag            time.Duration
	lastAccountAt  time.Time
	lossReason     string
	upSince        time.Time
	liveness       bool
}

// NewUpstream prepares the connection to address (nothing is dialled until Run).
func NewUpstream(address, token string, hub *Hub, log *Logger, metrics *Metrics) (*Upstream, error) {
	codec := contract.NewCodec()
	conn, err := grpc.NewClient("passthrough:///"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec), grpc.MaxCallRecvMsgSize(16<<20)),
		// grpc-go's default reconnect backoff grows to 120 s; C9 wants SERVING back within 15 s.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: backoffFirst, Multiplier: 1.6, Jitter: 0.2, MaxDelay: backoffMax},
			MinConnectTimeout: attemptDeadline,
		}),
		// C31: HTTP/2 keepalive after 10 s of silence, 5 s to answer (the watchdog is faster).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	)
	if err != nil {
		return nil, err
	}
	return &Upstream{
		Address: address, conn: conn, client: pb.NewExchangeServiceClient(conn), hub: hub, log: log,
		metrics: metrics, token: token, OnChange: func() {}, state: stateConnecting,
		lossReason: "the upstream exchange is not connected yet",
	}, nil
}

func (u *Upstream) outgoing(ctx context.Context) context.Context {
	if u.token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+u.token)
}

// DataAge is the time since the upstream's last sign of life (0 before the first).
func (u *Upstream) DataAge(now time.Time) time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dataAgeLocked(now)
}

func (u *Upstream) dataAgeLocked(now time.Time) time.Duration {
	if u.lastSignOfLife.IsZero() {
		return 0
	}
	return max(0, now.Sub(u.lastSignOfLife))
}

// Lag is the upstream lag of C30.
func (u *Upstream) Lag() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lag
}

// RecentLag is the upstream lag while account updates flow (0 otherwise): the overload signal.
func (u *Upstream) RecentLag() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state != stateUp || time.Since(u.lastAccountAt) > time.Second {
		return 0
	}
	return u.lag
}

// Staleness says why the view may not be served as current, or "" (C9, C30).
func (u *Upstream) Staleness(now time.Time) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stalenessLocked(now)
}

func (u *Upstream) stalenessLocked(now time.Time) string {
	if u.state != stateUp {
		return u.lossReason
	}
	if age := u.dataAgeLocked(now); age > StaleAfter {
		return fmt.Sprintf("the connector's view is stale: no sign of life from the upstream exchange for %.1f s (data age bound %.0f s)",
			age.Seconds(), StaleAfter.Seconds())
	}
	if u.lag > StaleAfter {
		return fmt.Sprintf("the connector's view is stale: the upstream exchange's updates arrive %.1f s late (upstream lag bound %.0f s)",
			u.lag.Seconds(), StaleAfter.Seconds())
	}
	return ""
}

// Serving reports whether health should read SERVING.
func (u *Upstream) Serving() bool { return u.Staleness(time.Now()) == "" }

// Up reports whether the upstream is connected, and why not.
func (u *Upstream) Up() (bool, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state == stateUp, u.lossReason
}

// Account is the view GetAccount answers from: the encoded account and its data age, or why
// it cannot be served.
func (u *Upstream) Account(now time.Time) (*contract.Frame, time.Duration, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if why := u.stalenessLocked(now); why != "" {
		return nil, 0, why
	}
	if u.accountProblem != "" {
		return nil, 0, u.accountProblem
	}
	if u.account == nil {
		return nil, 0, "no account from the upstream exchange yet"
	}
	return u.account, u.dataAgeLocked(now), ""
}

func (u *Upstream) signOfLife() {
	u.mu.Lock()
	u.lastSignOfLife = time.Now()
	u.mu.Unlock()
}

// Run connects, and reconnects with backoff whenever the exchange fails, until ctx ends.
func (u *Upstream) Run(ctx context.Context) {
	delay := backoffFirst
	for ctx.Err() == nil {
		started := time.Now()
		wasUp, why := u.attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		u.lost(why, wasUp)
		if wasUp && time.Since(started) > stableAfter {
			delay = backoffFirst
		}
		if !wasUp {
			u.log.Warning("upstream_unavailable", "upstream", u.Address, "reason", why, "retry_in_ms", delay.Milliseconds())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, backoffMax)
		u.metrics.UpstreamReconnects.Inc()
	}
}

// attempt holds one connection until it fails: it reports whether it was up, and why it ended.
func (u *Upstream) attempt(parent context.Context) (bool, string) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	fail := make(chan string, 4)
	failed := func(why string) {
		select {
		case fail <- why:
		default:
		}
	}
	ready := make(chan struct{}, 3)
	call := u.outgoing(ctx)

	accountStream, err := u.client.SubscribeAccount(call, &pb.SubscribeAccountRequest{})
	if err != nil {
		return false, "SubscribeAccount: " + describe(err)
	}
	positionsStream, err := u.client.SubscribePositions(call, &pb.SubscribePositionsRequest{})
	if err != nil {
		return false, "SubscribePositions: " + describe(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	read := func(topic string, stream grpc.ClientStream, handle func(*contract.Frame, time.Time)) {
		defer wg.Done()
		// A refusal without headers (trailers-only) makes Header return nil, nil: only a non-nil
		// header means the subscription is live.
		if md, err := stream.Header(); err != nil || md == nil {
			err = stream.RecvMsg(&contract.Frame{})
			failed(fmt.Sprintf("%s stream: %s", topic, describe(err)))
			return
		}
		ready <- struct{}{}
		for {
			frame := &contract.Frame{}
			if err := stream.RecvMsg(frame); err != nil {
				if errors.Is(err, io.EOF) {
					failed(topic + " stream ended by the exchange")
				} else {
					failed(fmt.Sprintf("%s stream: %s", topic, describe(err)))
				}
				return
			}
			handle(frame, time.Now())
		}
	}
	wg.Add(3)
	go read(TopicAccount, accountStream, u.onAccount)
	go read(TopicPositions, positionsStream, u.onPosition)
	go func() {
		defer wg.Done()
		seedCtx, seedCancel := context.WithTimeout(call, attemptDeadline)
		defer seedCancel()
		sent := time.Now()
		var frame contract.Frame
		if err := u.conn.Invoke(seedCtx, pb.ExchangeService_GetAccount_FullMethodName, &pb.GetAccountRequest{}, &frame); err != nil {
			failed("GetAccount: " + describe(err))
			return
		}
		u.onSeed(&frame, sent)
		ready <- struct{}{}
	}()

	started := time.Now()
	deadline := time.NewTimer(attemptDeadline)
	defer deadline.Stop()
	for n := 0; n < 3; n++ {
		select {
		case <-ready:
		case why := <-fail:
			return false, why
		case <-deadline.C:
			return false, fmt.Sprintf("no answer within %.0f s", attemptDeadline.Seconds())
		case <-ctx.Done():
			return false, "stopped"
		}
	}
	u.becameUp(started)
	ticker := time.NewTicker(watchEvery)
	defer ticker.Stop()
	for {
		select {
		case why := <-fail:
			return true, why
		case <-ctx.Done():
			return true, "stopped"
		case now := <-ticker.C:
			if why := u.watch(ctx, now); why != "" {
				return true, why
			}
		}
	}
}

func (u *Upstream) becameUp(started time.Time) {
	u.mu.Lock()
	u.state = stateUp
	u.upSince = time.Now()
	u.lastSignOfLife = time.Now()
	u.mu.Unlock()
	u.metrics.UpstreamConnections.Set(1)
	u.log.Info("upstream_connected", "upstream", u.Address, "took_ms", time.Since(started).Milliseconds())
	u.OnChange()
}

// lost ends every stream and says so (C9, C31); Run retries.
func (u *Upstream) lost(why string, wasUp bool) {
	u.mu.Lock()
	if u.state == stateStopped {
		u.mu.Unlock()
		return
	}
	u.state = stateDown
	u.haveOffset, u.lag, u.newestStamp = false, 0, time.Time{}
	if len(why) >= 29 && why[:29] == "the connector's view is stale" {
		u.lossReason = why
	} else {
		u.lossReason = "the upstream exchange failed: " + why
	}
	reason := u.lossReason
	u.mu.Unlock()
	u.metrics.UpstreamConnections.Set(0)
	if wasUp {
		u.log.Error("upstream_lost", "upstream", u.Address, "reason", why)
		ended := u.hub.EndAll(codes.Unavailable, reason, "upstream lost")
		u.log.Warning("not_serving", "reason", reason, "streams_ended", ended)
	}
	u.OnChange()
}

// watch asks a quiet exchange for a sign of life and gives up on a hung one (C30, C31, C33).
func (u *Upstream) watch(ctx context.Context, now time.Time) string {
	u.mu.Lock()
	age := u.dataAgeLocked(now)
	ask := age >= livenessAfter && !u.liveness
	if ask {
		u.liveness = true
	}
	u.mu.Unlock()
	u.metrics.DataAge.Set(age.Seconds())
	if age > StaleAfter {
		return u.Staleness(now)
	}
	if ask {
		go func() {
			callCtx, cancel := context.WithTimeout(u.outgoing(ctx), livenessDeadline)
			defer cancel()
			_, err := u.client.GetAccount(callCtx, &pb.GetAccountRequest{})
			u.mu.Lock()
			u.liveness = false
			u.mu.Unlock()
			if err == nil && ctx.Err() == nil {
				u.signOfLife()
			}
		}()
	}
	return ""
}

func (u *Upstream) onSeed(frame *contract.Frame, sent time.Time) {
	var account pb.Account
	if err := proto.Unmarshal(frame.Bytes, &account); err != nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.lastSignOfLife = time.Now()
	if problem := contract.CheckAccount(&account); problem != nil {
		return
	}
	// an update read meanwhile is newer than this answer
	if u.account == nil || u.accountReadAt.Before(sent) {
		u.account, u.accountReadAt, u.accountProblem = frame, sent, ""
	}
}

func (u *Upstream) onAccount(frame *contract.Frame, now time.Time) {
	u.signOfLife()
	u.metrics.UpstreamMessages.WithLabelValues(TopicAccount).Inc()
	var account pb.Account
	if err := proto.Unmarshal(frame.Bytes, &account); err != nil {
		u.refuse(TopicAccount, "message", err.Error())
		return
	}
	if problem := contract.CheckAccount(&account); problem != nil {
		u.refuse(TopicAccount, problem.Field, problem.Value)
		u.mu.Lock()
		u.accountProblem = fmt.Sprintf("the exchange sent an account the connector cannot vouch for (%s)", problem)
		u.mu.Unlock()
		return
	}
	u.mu.Lock()
	// only a stamp newer than every one before it on this connection says how far behind the read
	// is (C30): an account sent again unchanged, or one stamped earlier, does not
	if stamp := account.GetUpdatedAt(); stamp != nil && stamp.GetSeconds() > 0 && stamp.AsTime().After(u.newestStamp) {
		u.newestStamp = stamp.AsTime()
		offset := now.Sub(u.newestStamp)
		if !u.haveOffset || offset < u.minOffset {
			u.minOffset, u.haveOffset = offset, true
		}
		u.lag = offset - u.minOffset
	}
	u.lastAccountAt = now
	u.account, u.accountReadAt, u.accountProblem = frame, now, ""
	u.mu.Unlock()
	u.hub.Publish(TopicAccount, frame, "", now)
}

func (u *Upstream) onPosition(frame *contract.Frame, now time.Time) {
	u.signOfLife()
	u.metrics.UpstreamMessages.WithLabelValues(TopicPositions).Inc()
	var position pb.Position
	if err := proto.Unmarshal(frame.Bytes, &position); err != nil {
		u.refuse(TopicPositions, "message", err.Error())
		return
	}
	if problem := contract.CheckPosition(&position); problem != nil {
		u.refuse(TopicPositions, problem.Field, problem.Value)
		return
	}
	u.hub.Publish(TopicPositions, frame, position.GetSymbol(), now)
}

func (u *Upstream) refuse(topic, field, value string) {
	u.metrics.Invalid.WithLabelValues(topic).Inc()
	u.log.Error("upstream_invalid_data", "topic", topic, "field", field, "value", value,
		"reason", fmt.Sprintf("%s %q is not a decimal string; not forwarded", field, value))
}

// GetPositions asks the exchange (the caller shares calls in flight).
func (u *Upstream) GetPositions(ctx context.Context, symbol string) (*pb.GetPositionsResponse, error) {
	answer, err := u.client.GetPositions(u.outgoing(ctx), &pb.GetPositionsRequest{Symbol: symbol})
	if err == nil {
		u.signOfLife()
	}
	return answer, err
}

// Stop closes the connection for good; Run's context must be cancelled too.
func (u *Upstream) Stop() {
	u.mu.Lock()
	u.state = stateStopped
	u.lossReason = "the connector is shutting down"
	u.mu.Unlock()
	u.metrics.UpstreamConnections.Set(0)
	_ = u.conn.Close()
}

func describe(err error) string {
	if err == nil {
		return "ended"
	}
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", s.Code(), s.Message())
	}
	return err.Error()
}
