package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// Break describes one ended subscription, or one failed attempt to resubscribe.
type Break struct {
	Code    codes.Code
	Details string
	Message string
	Attempt int
	Backoff time.Duration
}

// Callbacks are a subscription's owner's. They run on the subscription's own goroutine, one at
// a time; none runs once Cancel has returned.
type Callbacks[T any] struct {
	OnSubscribed  func()      // once: the first subscription is established
	OnUpdate      func(*T)    // every message that keeps the contract, in order
	OnBreak       func(Break) // a subscription ended; the stream resubscribes after Break.Backoff
	OnReconnected func()      // once per break, before any update of the new subscription
}

// Subscription is a stream that resubscribes by itself until cancelled.
type Subscription struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Cancel ends the subscription and returns once its goroutine has ended.
func (s *Subscription) Cancel() {
	s.cancel()
	<-s.done
}

// Done is closed when the subscription has ended.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// stableAfter: a subscription that delivered a message, or stayed up this long, starts the
// backoff afresh.
const stableAfter = time.Second

type opener[T any] func(ctx context.Context, opts ...grpc.CallOption) (grpc.ServerStreamingClient[T], error)

// SubscribeAccount delivers every account update from now on, until ctx ends or Cancel.
func (r *RemoteExchange) SubscribeAccount(ctx context.Context, cb Callbacks[pb.Account]) *Subscription {
	open := func(ctx context.Context, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.Account], error) {
		return r.client.SubscribeAccount(ctx, &pb.SubscribeAccountRequest{}, opts...)
	}
	check := func(a *pb.Account) error {
		if p := contract.CheckAccount(a); p != nil {
			return p
		}
		return nil
	}
	return subscribe(ctx, r, "SubscribeAccount", open, check, cb)
}

// SubscribePositions delivers every position update of symbol ("" for all) from now on.
func (r *RemoteExchange) SubscribePositions(ctx context.Context, symbol string, cb Callbacks[pb.Position]) *Subscription {
	open := func(ctx context.Context, opts ...grpc.CallOption) (grpc.ServerStreamingClient[pb.Position], error) {
		return r.client.SubscribePositions(ctx, &pb.SubscribePositionsRequest{Symbol: symbol}, opts...)
	}
	check := func(p *pb.Position) error {
		if problem := contract.CheckPosition(p); problem != nil {
			return problem
		}
		if symbol != "" && p.GetSymbol() != symbol {
			return fmt.Errorf("symbol %q is not the subscribed %q", p.GetSymbol(), symbol)
		}
		return nil
	}
	return subscribe(ctx, r, "SubscribePositions", open, check, cb)
}

func subscribe[T any](parent context.Context, r *RemoteExchange, name string, open opener[T], check func(*T) error, cb Callbacks[T]) *Subscription {
	ctx, cancel := context.WithCancel(parent)
	if r.opts.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+r.opts.Token)
	}
	s := &Subscription{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		run(ctx, r.opts.Backoff, name, open, check, cb)
	}()
	return s
}

func delay(b Backoff, failures int) time.Duration {
	base := b.Initial
	for i := 1; i < failures && base < b.Max; i++ {
		base *= 2
	}
	base = min(base, b.Max)
	return time.Duration(float64(base) * (1 + (rand.Float64()*2-1)*0.2))
}

func run[T any](ctx context.Context, b Backoff, name string, open opener[T], check func(*T) error, cb Callbacks[T]) {
	everSubscribed, broken, failures := false, false, 0
	for attempt := 0; ctx.Err() == nil; attempt++ {
		up, delivered, upAt, err := once(ctx, attempt > 0, open, check, func() {
			switch {
			case !everSubscribed:
				everSubscribed = true
				call(cb.OnSubscribed)
			case broken:
				broken = false
				call(cb.OnReconnected)
			}
		}, cb.OnUpdate)
		if ctx.Err() != nil {
			return
		}
		if up && (delivered > 0 || time.Since(upAt) >= stableAfter) {
			failures = 1
		} else {
			failures++
		}
		broken = broken || everSubscribed
		wait := delay(b, failures)
		code, details := codes.OK, "the server ended the stream"
		if !errors.Is(err, io.EOF) {
			s := status.Convert(err)
			code, details = s.Code(), s.Message()
		}
		what := "could not subscribe"
		if up {
			what = "broke"
		}
		if cb.OnBreak != nil {
			cb.OnBreak(Break{
				Code: code, Details: details, Attempt: failures, Backoff: wait,
				Message: fmt.Sprintf("%s stream %s: %s: %s; resubscribing in %d ms", name, what, CodeName(code), details, wait.Milliseconds()),
			})
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

func call(f func()) {
	if f != nil {
		f()
	}
}

// once runs one subscription until it ends: whether it was established, how many messages it
// delivered, when it was established, and the error it ended with (io.EOF: status OK).
func once[T any](ctx context.Context, again bool, open opener[T], check func(*T) error, established func(), update func(*T)) (bool, int, time.Time, error) {
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// a resubscription waits for the channel to be ready again rather than failing at once
	stream, err := open(callCtx, grpc.WaitForReady(again))
	if err != nil {
		return false, 0, time.Time{}, err
	}
	// Header returns nil, nil for a trailers-only answer (a refusal): only a non-nil header
	// means the subscription is established.
	header, err := stream.Header()
	if err != nil || header == nil {
		_, err = stream.Recv()
		return false, 0, time.Time{}, err
	}
	upAt := time.Now()
	established()
	delivered := 0
	for {
		message, err := stream.Recv()
		if err != nil {
			return true, delivered, upAt, err
		}
		if ctx.Err() != nil {
			return true, delivered, upAt, ctx.Err()
		}
		if check(message) != nil {
			continue // never reaches the owner; the stream goes on
		}
		delivered++
		if update != nil {
			update(message)
		}
	}
}
