package connector

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

const (
	// DataAgeKey is the initial-metadata key of C32.
	DataAgeKey           = "x-opensqt-data-age-ms"
	getPositionsDeadline = 5 * time.Second
	// ShuttingDown is the details of every refusal and stream end during shutdown (C62).
	ShuttingDown = "the connector is shutting down"
	// MaxCalls is the number of calls and streams in flight past which new calls are refused (C39).
	MaxCalls = 10000
)

// Service serves opensqt.exchange.v1.ExchangeService from the hub and the upstream's view.
// It registers its own grpc.ServiceDesc (same service and method names as the generated one)
// so that each handler receives the request's bytes and decodes them itself: a request that
// does not parse is refused INVALID_ARGUMENT (C35), where grpc-go would answer INTERNAL.
type Service struct {
	Upstream *Upstream
	Hub      *Hub
	Log      *Logger
	Metrics  *Metrics
	Token    string

	stopping    atomic.Bool
	inFlight    atomic.Int64
	malformed   *RateLimited
	authRefused *RateLimited

	mu     sync.Mutex
	shared map[string]*flight
}

var errEnded = status.Error(codes.Canceled, "the subscriber has ended")

type flight struct {
	done   chan struct{}
	answer *pb.GetPositionsResponse
	err    error
}

// NewService wires the service; token "" means no authentication.
func NewService(u *Upstream, h *Hub, log *Logger, m *Metrics, token string) *Service {
	return &Service{
		Upstream: u, Hub: h, Log: log, Metrics: m, Token: token,
		malformed:   NewRateLimited(log, LevelWarning, "malformed_request", 10*time.Second),
		authRefused: NewRateLimited(log, LevelWarning, "auth_rejected", 10*time.Second),
		shared:      map[string]*flight{},
	}
}

// Stop makes every new call answer UNAVAILABLE "the connector is shutting down".
func (s *Service) Stop() { s.stopping.Store(true) }

// Stopping reports whether Stop was called.
func (s *Service) Stopping() bool { return s.stopping.Load() }

// Desc is the service's registration.
func (s *Service) Desc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: pb.ExchangeService_ServiceDesc.ServiceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "GetAccount", Handler: s.unary("GetAccount", func() proto.Message { return &pb.GetAccountRequest{} }, s.getAccount)},
			{MethodName: "GetPositions", Handler: s.unary("GetPositions", func() proto.Message { return &pb.GetPositionsRequest{} }, s.getPositions)},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "SubscribeAccount", ServerStreams: true, Handler: s.subscribe(TopicAccount, "SubscribeAccount")},
			{StreamName: "SubscribePositions", ServerStreams: true, Handler: s.subscribe(TopicPositions, "SubscribePositions")},
		},
		Metadata: pb.File_opensqt_exchange_v1_exchange_proto.Path(),
	}
}

func peerOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// admit returns the status to refuse a call with before any work, or nil.
func (s *Service) admit(ctx context.Context, method string, frame *contract.Frame, request proto.Message, symbol func() string) error {
	if err := contract.Decode(frame, request); err != nil {
		s.Metrics.Malformed.WithLabelValues(method).Inc()
		s.malformed.Log("method", method, "peer", peerOf(ctx), "reason", err.Error())
		return status.Errorf(codes.InvalidArgument, "malformed %s request: %v", method, err)
	}
	if err := s.authenticate(ctx); err != nil {
		return err
	}
	if sym := symbol(); !contract.ValidSymbol(sym) {
		shown := sym
		if len([]rune(shown)) > 20 {
			shown = string([]rune(shown)[:20])
		}
		return status.Errorf(codes.InvalidArgument,
			"symbol %q is not a valid instrument name (1-32 characters of A-Z0-9, or empty for every symbol)", shown)
	}
	if s.stopping.Load() {
		s.Metrics.Refused.WithLabelValues("shutting_down").Inc()
		return status.Error(codes.Unavailable, ShuttingDown)
	}
	if n := s.inFlight.Load(); n >= MaxCalls {
		s.Metrics.Refused.WithLabelValues("overloaded").Inc()
		return status.Errorf(codes.ResourceExhausted, "the connector is overloaded: %d calls in flight (limit %d)", n, MaxCalls)
	}
	return nil
}

// authenticate checks the bearer token (C16, C36).
func (s *Service) authenticate(ctx context.Context) error {
	if s.Token == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	reason := ""
	switch {
	case len(values) == 0:
		reason = "missing"
	case len(values) > 1 || !bearer(values[0], s.Token):
		reason = "invalid"
	default:
		return nil
	}
	s.Metrics.AuthRejected.WithLabelValues(reason).Inc()
	s.authRefused.Log("reason", reason, "peer", peerOf(ctx))
	if reason == "missing" {
		return status.Error(codes.Unauthenticated, "missing bearer token: send the metadata authorization: Bearer <token>")
	}
	return status.Error(codes.Unauthenticated, "invalid bearer token")
}

// bearer reports whether value is exactly the scheme Bearer (in any case), one space and token,
// the token compared whole and case-sensitively (C16).
func bearer(value, token string) bool {
	scheme, given, ok := strings.Cut(value, " ")
	return ok && strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare([]byte(given), []byte(token)) == 1
}

func (s *Service) begin() func() {
	// Inc and Dec, not Set: concurrent calls setting the counts they saw could leave a stale one last
	s.inFlight.Add(1)
	s.Metrics.CallsInFlight.Inc()
	return func() {
		s.inFlight.Add(-1)
		s.Metrics.CallsInFlight.Dec()
	}
}

type unaryWork func(ctx context.Context, request proto.Message) (any, error)

func (s *Service) unary(method string, newRequest func() proto.Message, work unaryWork) grpc.MethodHandler {
	full := fmt.Sprintf("/%s/%s", pb.ExchangeService_ServiceDesc.ServiceName, method)
	return func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		frame := &contract.Frame{}
		if err := dec(frame); err != nil {
			return nil, err
		}
		handler := func(ctx context.Context, _ any) (any, error) {
			defer s.begin()()
			request := newRequest()
			symbol := func() string {
				if r, ok := request.(*pb.GetPositionsRequest); ok {
					return r.GetSymbol()
				}
				return ""
			}
			if err := s.admit(ctx, method, frame, request, symbol); err != nil {
				return nil, err
			}
			return work(ctx, request)
		}
		if interceptor == nil {
			return handler(ctx, frame)
		}
		return interceptor(ctx, frame, &grpc.UnaryServerInfo{Server: s, FullMethod: full}, handler)
	}
}

func setDataAge(ctx context.Context, age time.Duration) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(DataAgeKey, strconv.FormatInt(max(0, age.Milliseconds()), 10)))
}

func (s *Service) getAccount(ctx context.Context, _ proto.Message) (any, error) {
	frame, age, why := s.Upstream.Account(time.Now())
	if why != "" {
		return nil, status.Error(codes.Unavailable, why)
	}
	setDataAge(ctx, age)
	return frame, nil
}

func (s *Service) getPositions(ctx context.Context, request proto.Message) (any, error) {
	if up, why := s.Upstream.Up(); !up {
		return nil, status.Error(codes.Unavailable, why)
	}
	symbol := request.(*pb.GetPositionsRequest).GetSymbol()
	s.mu.Lock()
	f, ok := s.shared[symbol]
	if !ok {
		f = &flight{done: make(chan struct{})}
		s.shared[symbol] = f
		s.Metrics.UpstreamGetPositions.Inc()
		go func() {
			defer s.begin()()
			callCtx, cancel := context.WithTimeout(context.Background(), getPositionsDeadline)
			defer cancel()
			f.answer, f.err = s.Upstream.GetPositions(callCtx, symbol)
			s.mu.Lock()
			delete(s.shared, symbol)
			s.mu.Unlock()
			close(f.done)
		}()
	} else {
		s.Metrics.GetPositionsShared.Inc()
	}
	s.mu.Unlock()
	select {
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-f.done:
	}
	if f.err != nil {
		code := codes.Unavailable
		if status.Code(f.err) == codes.InvalidArgument {
			code = codes.InvalidArgument
		}
		return nil, status.Errorf(code, "the upstream exchange failed: %s", describe(f.err))
	}
	out := &pb.GetPositionsResponse{}
	for _, p := range f.answer.GetPositions() {
		if symbol == "" || p.GetSymbol() == symbol {
			out.Positions = append(out.Positions, p)
		}
	}
	setDataAge(ctx, 0)
	return out, nil
}

func (s *Service) subscribe(topic, method string) grpc.StreamHandler {
	return func(_ any, stream grpc.ServerStream) error {
		ctx := stream.Context()
		frame := &contract.Frame{}
		if err := stream.RecvMsg(frame); err != nil {
			return err
		}
		var request proto.Message = &pb.SubscribeAccountRequest{}
		if topic == TopicPositions {
			request = &pb.SubscribePositionsRequest{}
		}
		symbol := func() string {
			if r, ok := request.(*pb.SubscribePositionsRequest); ok {
				return r.GetSymbol()
			}
			return ""
		}
		defer s.begin()()
		if err := s.admit(ctx, method, frame, request, symbol); err != nil {
			return err
		}
		if up, why := s.Upstream.Up(); !up {
			return status.Error(codes.Unavailable, why)
		}
		if s.Hub.Refusing(time.Now()) {
			s.Metrics.Refused.WithLabelValues("overloaded").Inc()
			return status.Error(codes.Unavailable, "the connector is overloaded and shedding subscribers; retry shortly")
		}
		sub := s.Hub.Add(topic, symbol(), peerOf(ctx))
		// headers once registered, before any update (C7)
		if err := stream.SendHeader(metadata.MD{}); err != nil {
			s.Hub.Remove(sub, "client gone")
			return err
		}
		// an update is handed to grpc-go only while the stream's earlier ones are on the wire, and
		// counts as waiting until its own bytes are (wire.go): the backlog waits where its age is
		// measured (C34, C38)
		conn := wireOf(ctx)
		var wired *wireStream
		if id := streamID(ctx); conn != nil && id != 0 {
			wired = conn.Stream(id)
			defer conn.Forget(id)
			sub.Wired(wired.Written)
		} else if conn != nil {
			conn.subscriptions.Add(1)
			defer conn.subscriptions.Add(-1)
		}
		go sub.Pump(func(f *contract.Frame) error {
			switch {
			case wired != nil:
				if !wired.waitRoom(sub.Done()) {
					return errEnded
				}
				sub.Handed(wired.Hand(len(f.Bytes) + 5)) // the message and its 5-byte prefix
			case conn != nil:
				if !conn.waitRoom(sub.Done()) {
					return errEnded
				}
			}
			return stream.SendMsg(f)
		})
		select {
		case <-sub.Done():
			return sub.Status()
		case <-ctx.Done():
			s.Hub.Remove(sub, "client gone")
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
