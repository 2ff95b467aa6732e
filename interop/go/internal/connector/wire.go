package connector

import (
	"context"
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"
)

// grpc-go's ServerStream.SendMsg returns once a message fits the stream's write quota (64 KiB),
// before HTTP/2 flow control lets it out: a client that reads slowly has up to 64 KiB queued in
// grpc-go, out of the connector's sight, and the lag bound of C34 would not see it. Wire sees
// what really leaves: it wraps each server connection (below HTTP/2, above TLS) and counts the
// DATA bytes written to it, and a stats handler counts the bytes handed to grpc-go
// (stats.OutPayload). A subscriber hands its next update only while its connection's bytes
// handed but not yet written stay within a budget, so its backlog waits in its own queue, where
// its age is measured.

// WireBudget is how many bytes per subscription a connection may hold handed but not written.
const WireBudget = 8 << 10

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
	tracked := &wireConn{Conn: conn, wake: make(chan struct{})}
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

// wireConn is one connection: the HTTP/2 frames written to it are parsed just enough to count
// their DATA bytes (each message's 5-byte prefix included, as in OutPayload.WireLength).
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
			continue
		}
		k := min(len(p), c.remaining)
		if c.data {
			data += int64(k)
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

// pending is how many bytes were handed to grpc-go on this connection and not yet written.
func (c *wireConn) pending() int64 { return c.handed.Load() - c.written.Load() }

// waitRoom returns once the connection holds at most its budget handed but not written, or
// when done is closed (false).
func (c *wireConn) waitRoom(done <-chan struct{}) bool {
	for {
		budget := WireBudget * max(1, c.subscriptions.Load())
		c.mu.Lock()
		wake := c.wake
		c.mu.Unlock()
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
