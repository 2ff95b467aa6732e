// Package remote is a small Go client library of opensqt.exchange.v1.ExchangeService: the
// RemoteExchange of the spec's §3.1 and §4.1. It validates the address before any network I/O,
// connects with a timeout, honours contexts (deadlines, cancellation) on every call, refuses
// answers that break the contract (money fields that are not decimal strings), and keeps
// subscriptions alive by itself: a broken stream is reported, resubscribed after an
// exponential, jittered backoff, and its owner told that a gap may have happened.
package remote

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/internal/contract"
)

// Kind says what kind of failure an *Error is.
type Kind string

// The kinds of failure (they match the client-driver protocol's error kinds).
const (
	KindInvalidAddress Kind = "invalid_address"
	KindEmptyAddress   Kind = "empty_address"
	KindConnectTimeout Kind = "connect_timeout"
	KindTLS            Kind = "tls"
	KindRPC            Kind = "rpc"
	KindInvalidData    Kind = "invalid_data"
	KindCancelled      Kind = "cancelled"
)

// Error is every failure the library reports.
type Error struct {
	Kind    Kind
	Code    codes.Code // the gRPC status code (codes.OK where none applies)
	Details string     // the server's status message, unchanged
	Message string     // the library's own message
	HasCode bool
}

func (e *Error) Error() string { return e.Message }

// CodeName is the gRPC status name of an error's code (UNAVAILABLE, ...), or "".
func (e *Error) CodeName() string {
	if !e.HasCode {
		return ""
	}
	return CodeName(e.Code)
}

var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
	codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
	codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
	codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// CodeName is the canonical name of a gRPC status code (as the other gRPC stacks spell it).
func CodeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return strconv.Itoa(int(c))
}

// TLSFiles are the PEM files of a TLS connection; Cert and Key only for mutual TLS.
type TLSFiles struct {
	CA, Cert, Key string
}

// Backoff bounds the reconnection delays of the channel and of resubscribing streams.
type Backoff struct {
	Initial, Max time.Duration
}

// DefaultBackoff is used when Options.Backoff is zero. grpc-go's own default grows to 120 s,
// far past the 15 s in which a connector is back (rule C9).
var DefaultBackoff = Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// Options of Dial.
type Options struct {
	TLS            *TLSFiles
	Token          string        // sent as "authorization: Bearer <token>"
	ConnectTimeout time.Duration // default 5 s
	CallTimeout    time.Duration // the deadline of a call whose context has none; 0: none
	Backoff        Backoff
}

// RemoteExchange is a connected client of one exchange_connector.
type RemoteExchange struct {
	conn    *grpc.ClientConn
	client  pb.ExchangeServiceClient
	opts    Options
	Address string
}

var hostLabel = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)

// CheckAddress returns an *Error of kind empty_address or invalid_address unless address is
// host:port (a host name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535).
func CheckAddress(address string) error {
	text := strings.TrimSpace(address)
	if text == "" {
		return &Error{Kind: KindEmptyAddress, Message: "exchange address is empty; expected host:port or [::1]:port"}
	}
	problem := addressProblem(text)
	if problem == "" {
		return nil
	}
	return &Error{Kind: KindInvalidAddress, Message: fmt.Sprintf("exchange address %q is malformed: %s", address, problem)}
}

func addressProblem(text string) string {
	if strings.Contains(text, "://") {
		return "a URL scheme is not expected"
	}
	var host, port string
	if strings.HasPrefix(text, "[") {
		end := strings.Index(text, "]:")
		if end < 0 {
			return "an IPv6 address in brackets must be followed by :port"
		}
		host, port = text[1:end], text[end+2:]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil && !strings.Contains(host, ":") {
			return fmt.Sprintf("%s is not an IPv6 address", host)
		}
	} else {
		at := strings.LastIndex(text, ":")
		if at < 0 {
			return "the :port is missing"
		}
		host, port = text[:at], text[at+1:]
		if strings.Contains(host, ":") {
			return "an IPv6 address must be written in brackets"
		}
		if host == "" {
			return "the host is missing"
		}
		for _, label := range strings.Split(host, ".") {
			if !hostLabel.MatchString(label) {
				return fmt.Sprintf("%q is not a host name", host)
			}
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || strings.TrimLeft(port, "0123456789") != "" {
		return fmt.Sprintf("port %q is not a number", port)
	}
	if n < 1 || n > 65535 {
		return fmt.Sprintf("port %d is out of range 1-65535", n)
	}
	return ""
}

func transportCredentials(files *TLSFiles) (credentials.TransportCredentials, error) {
	if files == nil {
		return insecure.NewCredentials(), nil
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if files.CA != "" {
		pem, err := os.ReadFile(files.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", files.CA)
		}
		config.RootCAs = pool
	}
	if files.Cert != "" || files.Key != "" {
		pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

// Dial checks the address, connects and returns once the channel is ready, or fails: kind
// connect_timeout past opts.ConnectTimeout (or ctx's deadline), tls when the TLS handshake fails.
func Dial(ctx context.Context, address string, opts Options) (*RemoteExchange, error) {
	if err := CheckAddress(address); err != nil {
		return nil, err
	}
	address = strings.TrimSpace(address)
	creds, err := transportCredentials(opts.TLS)
	if err != nil {
		return nil, &Error{Kind: KindTLS, Message: fmt.Sprintf("cannot load the TLS files: %v", err)}
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 5 * time.Second
	}
	if opts.Backoff.Initial <= 0 {
		opts.Backoff.Initial = DefaultBackoff.Initial
	}
	if opts.Backoff.Max < opts.Backoff.Initial {
		opts.Backoff.Max = max(opts.Backoff.Initial, DefaultBackoff.Max)
	}
	conn, err := grpc.NewClient("passthrough:///"+address,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: opts.Backoff.Initial, Multiplier: 2, Jitter: 0.2, MaxDelay: opts.Backoff.Max},
			MinConnectTimeout: opts.ConnectTimeout,
		}),
	)
	if err != nil {
		return nil, &Error{Kind: KindInvalidAddress, Message: fmt.Sprintf("exchange address %q: %v", address, err)}
	}
	r := &RemoteExchange{conn: conn, client: pb.NewExchangeServiceClient(conn), opts: opts, Address: address}
	if err := r.waitReady(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return r, nil
}

func (r *RemoteExchange) waitReady(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, r.opts.ConnectTimeout)
	defer cancel()
	r.conn.Connect()
	what := "connection"
	if r.opts.TLS != nil {
		what = "TLS connection"
	}
	for state := r.conn.GetState(); state != connectivity.Ready; state = r.conn.GetState() {
		if state == connectivity.TransientFailure && r.opts.TLS != nil {
			// a certificate the CA did not sign fails the same way every time: say so now
			if cause := r.lastError(parent); isTLSFailure(cause) {
				return &Error{Kind: KindTLS, Message: fmt.Sprintf("the TLS handshake with %s failed: %s", r.Address, cause)}
			}
		}
		if !r.conn.WaitForStateChange(ctx, state) {
			if parent.Err() != nil {
				return &Error{Kind: KindCancelled, Code: codes.Canceled, HasCode: true, Message: "connect cancelled"}
			}
			message := fmt.Sprintf("could not establish a %s to %s within %d ms (connect timeout)", what, r.Address, r.opts.ConnectTimeout.Milliseconds())
			if cause := r.lastError(parent); cause != "" {
				message += "; last error: " + cause
			}
			return &Error{Kind: KindConnectTimeout, Message: message}
		}
	}
	return nil
}

func isTLSFailure(cause string) bool {
	lower := strings.ToLower(cause)
	return strings.Contains(lower, "tls") || strings.Contains(lower, "certificate") || strings.Contains(lower, "x509")
}

// lastError asks the channel, with a fail-fast call of 250 ms, why it is not ready.
func (r *RemoteExchange) lastError(parent context.Context) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 250*time.Millisecond)
	defer cancel()
	_, err := r.client.GetAccount(ctx, &pb.GetAccountRequest{})
	if err == nil {
		return ""
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.DeadlineExceeded {
		return s.Message()
	}
	return ""
}

// Close ends the connection; calls and streams in flight end with it.
func (r *RemoteExchange) Close() error { return r.conn.Close() }

// callContext adds the token and, where ctx has no deadline, the default call timeout.
func (r *RemoteExchange) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.opts.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+r.opts.Token)
	}
	if _, ok := ctx.Deadline(); !ok && r.opts.CallTimeout > 0 {
		return context.WithTimeout(ctx, r.opts.CallTimeout)
	}
	return context.WithCancel(ctx)
}

func rpcError(ctx context.Context, method string, err error) error {
	s := status.Convert(err)
	if s.Code() == codes.Canceled && errors.Is(ctx.Err(), context.Canceled) {
		return &Error{Kind: KindCancelled, Code: codes.Canceled, HasCode: true, Message: method + " was cancelled"}
	}
	return &Error{
		Kind: KindRPC, Code: s.Code(), HasCode: true, Details: s.Message(),
		Message: fmt.Sprintf("%s failed: %s: %s", method, CodeName(s.Code()), s.Message()),
	}
}

// GetAccount asks for the account's current balances.
func (r *RemoteExchange) GetAccount(ctx context.Context) (*pb.Account, error) {
	callCtx, cancel := r.callContext(ctx)
	defer cancel()
	account, err := r.client.GetAccount(callCtx, &pb.GetAccountRequest{})
	if err != nil {
		return nil, rpcError(ctx, "GetAccount", err)
	}
	if problem := contract.CheckAccount(account); problem != nil {
		return nil, &Error{Kind: KindInvalidData, Message: "GetAccount: the server's account breaks the contract: " + problem.Error()}
	}
	return account, nil
}

// GetPositions asks for the open positions of symbol ("" for every symbol).
func (r *RemoteExchange) GetPositions(ctx context.Context, symbol string) ([]*pb.Position, error) {
	callCtx, cancel := r.callContext(ctx)
	defer cancel()
	answer, err := r.client.GetPositions(callCtx, &pb.GetPositionsRequest{Symbol: symbol})
	if err != nil {
		return nil, rpcError(ctx, "GetPositions", err)
	}
	for _, p := range answer.GetPositions() {
		if problem := contract.CheckPosition(p); problem != nil {
			return nil, &Error{Kind: KindInvalidData, Message: "GetPositions: the server's position breaks the contract: " + problem.Error()}
		}
	}
	return answer.GetPositions(), nil
}
