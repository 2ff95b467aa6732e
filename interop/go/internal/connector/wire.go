package connector

import (
	"context"
	"net"
	"reflect"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"
)

// grpc-go's ServerStream.SendMsg returns once a message fits the stream's write quota (64 KiB),
// before HTTP/2 flow control lets it out: a client that reads slowly has up to 64 KiB queued in
// grpc-go, out of the connector's sight, and the lag bound of C34 would not see it. Wire sees
// what really leaves: it wraps each server connection (below HTTP/2, above TLS) and counts the
// DATA bytes written to it, per HTTP/2 stream. A subscriber hands its next update only while its
// own stream holds at most WireBudget bytes handed and not yet written, and an update handed and
// not yet written still counts as waiting, so its age is measured until it is on the wire.
//
// Per stream, not per connection: streams that share a connection (grpcio channels of one process
// with the same options share one) drain at their own clients' pace, and under a connection-wide
// budget the slowest of them ends up holding all of it, out of sight.

// WireBudget is how many bytes a subscription may hold handed to grpc-go and not yet written.
const WireBudget = 1 << 10

// Wire tracks the server's connections.
type Wire struct {
	conns sync.Map // remote address -> *wireConn
}

type wireKey struct{}

// Credentials wraps creds so that every connection it hands to grpc-go is tracked.
func (w *Wire) Credentials(creds credentials.TransportCredentials) credentials.TransportCredentials {
	return wireCreds{TransportCredentials: creds, wire: w}
}

// StatsHandler counts the bytes of every message the server sends, per connection.
func (w *Wire) StatsHandler() stats.Handler { return wireStats{wire: w} }

type wireCreds struct {
	credentials.TransportCredentials
	wire *Wire
}

func (c wireCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	tracked := &wireConn{Conn: conn, wake: make(chan struct{}), streams: map[uint32]*wireStream{}}
	c.wire.conns.Store(raw.RemoteAddr().String(), tracked)
	return tracked, info, nil
}

func (c wireCreds) Clone() credentials.TransportCredentials {
	return wireCreds{TransportCredentials: c.TransportCredentials.Clone(), wire: c.wire}
}

type wireStats struct{ wire *Wire }

func (s wireStats) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	if info.RemoteAddr == nil {
		return ctx
	}
	if conn, ok := s.wire.conns.Load(info.RemoteAddr.String()); ok {
		return context.WithValue(ctx, wireKey{}, conn)
	}
	return ctx
}

func (s wireStats) HandleConn(ctx context.Context, event stats.ConnStats) {
	if _, ok := event.(*stats.ConnEnd); ok {
		if conn := wireOf(ctx); conn != nil {
			s.wire.conns.CompareAndDelete(conn.RemoteAddr().String(), conn)
		}
	}
}

func (s wireStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (s wireStats) HandleRPC(ctx context.Context, event stats.RPCStats) {
	if payload, ok := event.(*stats.OutPayload); ok {
		if conn := wireOf(ctx); conn != nil {
			conn.handed.Add(int64(payload.WireLength))
		}
	}
}

func wireOf(ctx context.Context) *wireConn {
	conn, _ := ctx.Value(wireKey{}).(*wireConn)
	return conn
}

// streamID is the HTTP/2 stream id of the server stream of ctx, or 0. grpc-go does not export it
// (transport.ServerStream embeds Stream, whose field id holds it); it is read by reflection, and
// TestStreamIDOfAServerStream fails should a grpc-go upgrade move it.
func streamID(ctx context.Context) uint32 {
	v := reflect.ValueOf(grpc.ServerTransportStreamFromContext(ctx))
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return 0
	}
	id := v.Elem().FieldByName("id")
	if !id.IsValid() || id.Kind() != reflect.Uint32 {
		return 0
	}
	return uint32(id.Uint())
}

// wireConn is one connection: the HTTP/2 frames written to it are parsed just enough to count
// their DATA bytes (each message's 5-byte prefix included, as in OutPayload.WireLength), in all
// and per stream.
type wireConn struct {
	net.Conn
	handed        atomic.Int64
	written       atomic.Int64
	subscriptions atomic.Int64

	mu        sync.Mutex
	header    [9]byte
	headerN   int
	remaining int
	data      bool
	stream    uint32
	streams   map[uint32]*wireStream
	wake      chan struct{} // closed (and replaced) whenever DATA bytes were written
}

func (c *wireConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.count(p[:n])
	return n, err
}

func (c *wireConn) count(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var data int64
	for len(p) > 0 {
		if c.remaining == 0 {
			k := copy(c.header[c.headerN:], p)
			c.headerN += k
			p = p[k:]
			if c.headerN < len(c.header) {
				break
			}
			c.headerN = 0
			c.remaining = int(c.header[0])<<16 | int(c.header[1])<<8 | int(c.header[2])
			c.data = c.header[3] == 0 // DATA
			c.stream = (uint32(c.header[5])<<24 | uint32(c.header[6])<<16 | uint32(c.header[7])<<8 | uint32(c.header[8])) & 0x7fffffff
			continue
		}
		k := min(len(p), c.remaining)
		if c.data {
			data += int64(k)
			if s := c.streams[c.stream]; s != nil {
				s.written.Add(int64(k))
			}
		}
		c.remaining -= k
		p = p[k:]
	}
	if data > 0 {
		c.written.Add(data)
		close(c.wake)
		c.wake = make(chan struct{})
	}
}

func (c *wireConn) woken() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wake
}

// pending is how many bytes were handed to grpc-go on this connection and not yet written.
func (c *wireConn) pending() int64 { return c.handed.Load() - c.written.Load() }

// waitRoom returns once the connection holds at most its budget handed but not written, or
// when done is closed (false). It serves streams whose id could not be read.
func (c *wireConn) waitRoom(done <-chan struct{}) bool {
	for {
		budget := WireBudget * max(1, c.subscriptions.Load())
		wake := c.woken()
		if c.pending() <= budget {
			return true
		}
		select {
		case <-wake:
		case <-done:
			return false
		}
	}
}

// Stream tracks the DATA bytes of stream id written from now on; Forget ends that.
func (c *wireConn) Stream(id uint32) *wireStream {
	s := &wireStream{conn: c}
	c.mu.Lock()
	c.streams[id] = s
	c.mu.Unlock()
	return s
}

// Forget stops tracking stream id.
func (c *wireConn) Forget(id uint32) {
	c.mu.Lock()
	delete(c.streams, id)
	c.mu.Unlock()
}

// wireStream is one tracked stream: the bytes handed to grpc-go by its one sender, and the DATA
// bytes of it written to the connection.
type wireStream struct {
	conn    *wireConn
	handed  atomic.Int64
	written atomic.Int64
}

// Hand counts n bytes handed to grpc-go (a message and its 5-byte prefix); it returns the total.
func (s *wireStream) Hand(n int) int64 { return s.handed.Add(int64(n)) }

// Written is how many of the stream's bytes are on the wire.
func (s *wireStream) Written() int64 { return s.written.Load() }

// waitRoom returns once the stream holds at most WireBudget bytes handed but not written, or
// when done is closed (false).
func (s *wireStream) waitRoom(done <-chan struct{}) bool {
	for {
		wake := s.conn.woken()
		if s.handed.Load()-s.written.Load() <= WireBudget {
			return true
		}
		select {
		case <-wake:
		case <-done:
			return false
		}
	}
}
