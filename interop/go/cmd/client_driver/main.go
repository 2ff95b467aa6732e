// Command client_driver drives the Go client library (interop/go/remote) over the client-driver
// protocol of docs/client-driver.md: commands as JSON lines on stdin, events as JSON lines on
// stdout, a free-form log on stderr. Each command runs on its own goroutine, so one that waits
// never holds up the next.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/opensqt/grpc-conformance/interop/go/exchangev1"
	"github.com/opensqt/grpc-conformance/interop/go/remote"
)

var started = time.Now()

// output writes one event per line, whole lines only.
type output struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *output) emit(event, id string, fields map[string]any) {
	record := map[string]any{"event": event}
	for k, v := range fields {
		record[k] = v
	}
	if id != "" {
		record["id"] = id
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	// t_ms is read under the lock, so it never decreases from one line to the next
	record["t_ms"] = math.Round(float64(time.Since(started).Microseconds())) / 1000
	data, err := json.Marshal(record)
	if err != nil {
		data = []byte(fmt.Sprintf(`{"event":"error","kind":"bad_command","code":"","details":"","message":%q,"took_ms":0}`, err.Error()))
	}
	_, _ = o.w.Write(append(data, '\n'))
	_ = o.w.Flush()
}

func tookMs(since time.Time) float64 {
	return math.Round(float64(time.Since(since).Microseconds())) / 1000
}

// payload is a contract message as canonical proto3 JSON with the .proto's field names.
func payload(m proto.Message) any {
	data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return map[string]any{}
	}
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return out
}

type command struct {
	ID             string          `json:"id"`
	Cmd            string          `json:"cmd"`
	Address        *string         `json:"address"`
	TLS            *tlsFiles       `json:"tls"`
	Token          *string         `json:"token"`
	ConnectTimeout *float64        `json:"connect_timeout_ms"`
	CallTimeout    *float64        `json:"call_timeout_ms"`
	Reconnect      *reconnectHints `json:"reconnect"`
	Deadline       *float64        `json:"deadline_ms"`
	Symbol         string          `json:"symbol"`
	Target         string          `json:"target"`
}

type tlsFiles struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

type reconnectHints struct {
	Initial *float64 `json:"initial_backoff_ms"`
	Max     *float64 `json:"max_backoff_ms"`
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// work is a call or stream in flight: cancel ends it, done is closed once it has ended.
type work struct {
	cancel func()
	done   chan struct{}
}

type driver struct {
	out *output

	mu         sync.Mutex
	client     *remote.RemoteExchange
	connecting bool
	works      map[string]*work
	finished   map[string]bool
	wg         sync.WaitGroup
}

func (d *driver) fail(id string, kind remote.Kind, message string, since time.Time) {
	d.out.emit("error", id, map[string]any{"kind": string(kind), "code": "", "details": "", "message": message, "took_ms": tookMs(since)})
}

func (d *driver) failWith(id string, err error, since time.Time) {
	var e *remote.Error
	if !errors.As(err, &e) {
		d.fail(id, "rpc", err.Error(), since)
		return
	}
	d.out.emit("error", id, map[string]any{
		"kind": string(e.Kind), "code": e.CodeName(), "details": e.Details, "message": e.Message, "took_ms": tookMs(since),
	})
}

func (d *driver) handle(line []byte) {
	since := time.Now()
	var raw any
	if err := json.Unmarshal(line, &raw); err != nil {
		d.fail("", "bad_command", "not a command: "+err.Error(), since)
		return
	}
	if _, ok := raw.(map[string]any); !ok {
		d.fail("", "bad_command", "not a command: a command is a JSON object", since)
		return
	}
	var c command
	if err := json.Unmarshal(line, &c); err != nil {
		id, _ := raw.(map[string]any)["id"].(string)
		d.fail(id, "bad_command", "malformed command: "+err.Error(), since)
		return
	}
	if c.ID == "" {
		d.fail("", "bad_command", fmt.Sprintf("every command needs a non-empty string id, got %s", line), since)
		return
	}
	switch c.Cmd {
	case "connect":
		d.connect(c, since)
	case "get_account", "get_positions", "subscribe_account", "subscribe_positions":
		d.mu.Lock()
		client := d.client
		d.mu.Unlock()
		if client == nil {
			d.fail(c.ID, "bad_command", "no client: send connect first", since)
			return
		}
		if c.Cmd == "get_account" || c.Cmd == "get_positions" {
			d.unary(client, c, since)
		} else {
			d.subscribe(client, c)
		}
	case "cancel":
		d.cancel(c, since)
	case "close":
		d.closeAll()
		d.out.emit("closed", c.ID, map[string]any{"took_ms": tookMs(since)})
	default:
		d.fail(c.ID, "bad_command", fmt.Sprintf("unknown command %q (known: connect, get_account, get_positions, subscribe_account, subscribe_positions, cancel, close)", c.Cmd), since)
	}
}

func (d *driver) connect(c command, since time.Time) {
	d.mu.Lock()
	if d.client != nil || d.connecting {
		d.mu.Unlock()
		d.fail(c.ID, "bad_command", "a client is already connected: send close first", since)
		return
	}
	d.connecting = true
	d.mu.Unlock()
	opts := remote.Options{ConnectTimeout: 5 * time.Second}
	if c.ConnectTimeout != nil && *c.ConnectTimeout > 0 {
		opts.ConnectTimeout = ms(*c.ConnectTimeout)
	}
	if c.CallTimeout != nil && *c.CallTimeout > 0 {
		opts.CallTimeout = ms(*c.CallTimeout)
	}
	if c.Token != nil {
		opts.Token = *c.Token
	}
	if c.TLS != nil {
		opts.TLS = &remote.TLSFiles{CA: c.TLS.CA, Cert: c.TLS.Cert, Key: c.TLS.Key}
	}
	if h := c.Reconnect; h != nil {
		if h.Initial != nil && *h.Initial > 0 {
			opts.Backoff.Initial = ms(*h.Initial)
		}
		if h.Max != nil && *h.Max > 0 {
			opts.Backoff.Max = ms(*h.Max)
		}
	}
	address := ""
	if c.Address != nil {
		address = *c.Address
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := d.track(c.ID, cancel)
	d.wg.Go(func() {
		defer close(w.done)
		defer d.untrack(c.ID)
		defer cancel()
		client, err := remote.Dial(ctx, address, opts)
		d.mu.Lock()
		d.connecting = false
		if err == nil {
			d.client = client
		}
		d.mu.Unlock()
		if err != nil {
			d.failWith(c.ID, err, since)
			return
		}
		d.out.emit("connected", c.ID, map[string]any{"took_ms": tookMs(since), "tls": c.TLS != nil})
	})
}

func (d *driver) track(id string, cancel func()) *work {
	w := &work{cancel: cancel, done: make(chan struct{})}
	d.mu.Lock()
	d.works[id] = w
	d.mu.Unlock()
	return w
}

func (d *driver) untrack(id string) {
	d.mu.Lock()
	delete(d.works, id)
	d.finished[id] = true
	d.mu.Unlock()
}

func (d *driver) unary(client *remote.RemoteExchange, c command, since time.Time) {
	ctx, cancel := context.WithCancel(context.Background())
	if c.Deadline != nil && *c.Deadline > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), ms(*c.Deadline))
	}
	w := d.track(c.ID, cancel)
	d.wg.Go(func() {
		defer close(w.done)
		defer cancel()
		defer d.untrack(c.ID)
		if c.Cmd == "get_account" {
			account, err := client.GetAccount(ctx)
			if err != nil {
				d.failWith(c.ID, err, since)
				return
			}
			d.out.emit("result", c.ID, map[string]any{"took_ms": tookMs(since), "account": payload(account)})
			return
		}
		positions, err := client.GetPositions(ctx, c.Symbol)
		if err != nil {
			d.failWith(c.ID, err, since)
			return
		}
		list := make([]any, 0, len(positions))
		for _, p := range positions {
			list = append(list, payload(p))
		}
		d.out.emit("result", c.ID, map[string]any{"took_ms": tookMs(since), "positions": list})
	})
}

func callbacks[T any](d *driver, id, field string, encode func(*T) any) remote.Callbacks[T] {
	return remote.Callbacks[T]{
		OnSubscribed: func() { d.out.emit("subscribed", id, nil) },
		OnUpdate:     func(m *T) { d.out.emit("update", id, map[string]any{field: encode(m)}) },
		OnBreak: func(b remote.Break) {
			log.Print(b.Message)
			d.out.emit("stream_error", id, map[string]any{
				"code": remote.CodeName(b.Code), "details": b.Details, "message": b.Message,
				"attempt": b.Attempt, "backoff_ms": b.Backoff.Milliseconds(),
			})
		},
		OnReconnected: func() { d.out.emit("reconnected", id, nil) },
	}
}

func (d *driver) subscribe(client *remote.RemoteExchange, c command) {
	var sub *remote.Subscription
	if c.Cmd == "subscribe_account" {
		sub = client.SubscribeAccount(context.Background(), callbacks(d, c.ID, "account", func(a *pb.Account) any { return payload(a) }))
	} else {
		sub = client.SubscribePositions(context.Background(), c.Symbol, callbacks(d, c.ID, "position", func(p *pb.Position) any { return payload(p) }))
	}
	w := d.track(c.ID, sub.Cancel)
	go func() {
		<-sub.Done()
		close(w.done)
	}()
}

func (d *driver) cancel(c command, since time.Time) {
	d.mu.Lock()
	w, ok := d.works[c.Target]
	known := d.finished[c.Target]
	d.mu.Unlock()
	if !ok && !known {
		d.fail(c.ID, "bad_command", fmt.Sprintf("no call or stream has the id %q", c.Target), since)
		return
	}
	d.wg.Go(func() {
		if ok {
			w.cancel()
			<-w.done // nothing of the target follows this event
			d.untrack(c.Target)
		}
		d.out.emit("cancelled", c.ID, map[string]any{"target": c.Target, "took_ms": tookMs(since)})
	})
}

// closeAll ends every call and stream, then the client.
func (d *driver) closeAll() {
	d.mu.Lock()
	works := make([]*work, 0, len(d.works))
	for id, w := range d.works {
		works = append(works, w)
		d.finished[id] = true
	}
	d.works = map[string]*work{}
	d.mu.Unlock()
	for _, w := range works {
		w.cancel()
	}
	for _, w := range works {
		<-w.done
	}
	d.mu.Lock()
	client := d.client
	d.client = nil
	d.mu.Unlock()
	if client != nil {
		_ = client.Close()
	}
}

func grpcVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "google.golang.org/grpc" {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func main() {
	log.SetOutput(os.Stderr)
	log.SetPrefix("go-driver ")
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	d := &driver{
		out:      &output{w: bufio.NewWriter(os.Stdout)},
		works:    map[string]*work{},
		finished: map[string]bool{},
	}
	d.out.emit("ready", "", map[string]any{
		"protocol": 1, "library": "interop/go/remote RemoteExchange", "language": runtime.Version(), "grpc_go": grpcVersion(),
	})
	reader := bufio.NewReaderSize(os.Stdin, 1<<16)
	for {
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 && len(trim(line)) > 0 {
			d.handle(trim(line))
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				log.Printf("reading stdin: %v", err)
			}
			break
		}
	}
	d.closeAll()
	d.wg.Wait()
	log.Print("end of input: closed")
}

func trim(line []byte) []byte {
	for len(line) > 0 && (line[len(line)-1] == '\n' || line[len(line)-1] == '\r' || line[len(line)-1] == ' ') {
		line = line[:len(line)-1]
	}
	return line
}
