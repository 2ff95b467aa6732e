package connector

import (
	"encoding/json"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Log levels, lowest first.
const (
	LevelDebug = iota
	LevelInfo
	LevelWarning
	LevelError
)

var levelNames = []string{"debug", "info", "warning", "error"}

// ParseLevel maps a level name (debug, info, warning, error) to its level; unknown names are info.
func ParseLevel(name string) int {
	for i, n := range levelNames {
		if strings.EqualFold(n, name) || (n == "warning" && strings.EqualFold(name, "warn")) {
			return i
		}
	}
	return LevelInfo
}

// Logger writes one JSON object per line: ts, level, logger, event and the event's fields.
// Lines go through a buffer to a writer goroutine, so a reader of the log that falls behind (a
// full pipe) never blocks the connector; past the buffer, lines are dropped and counted, and
// the count is logged once the writer catches up.
type Logger struct {
	min     int
	lines   chan []byte
	dropped atomic.Int64
	done    chan struct{}
	once    sync.Once
}

// logBuffer is how many lines may wait for the writer.
const logBuffer = 8192

// NewLogger logs to w at level min and above.
func NewLogger(w io.Writer, min int) *Logger {
	l := &Logger{min: min, lines: make(chan []byte, logBuffer), done: make(chan struct{})}
	go l.write(w)
	return l
}

func (l *Logger) write(w io.Writer) {
	defer close(l.done)
	for line := range l.lines {
		_, _ = w.Write(line)
		if n := l.dropped.Swap(0); n > 0 {
			_, _ = w.Write(l.format(LevelWarning, "log_lines_dropped", "count", n,
				"reason", "the log's reader fell behind"))
		}
	}
}

// Close writes the lines still buffered (for at most 2 s) and stops the writer.
func (l *Logger) Close() {
	l.once.Do(func() { close(l.lines) })
	select {
	case <-l.done:
	case <-time.After(2 * time.Second):
	}
}

func (l *Logger) format(level int, event string, fields ...any) []byte {
	line := map[string]any{
		"ts":     time.Now().UTC().Format(time.RFC3339Nano),
		"level":  levelNames[level],
		"logger": "exchange_connector",
		"event":  event,
	}
	for i := 0; i+1 < len(fields); i += 2 {
		if key, ok := fields[i].(string); ok {
			line[key] = fields[i+1]
		}
	}
	data, err := json.Marshal(line)
	if err != nil {
		data = []byte(`{"level":"warning","event":"log_failed"}`)
	}
	return append(data, '\n')
}

// Log writes one line; fields are name/value pairs. It never blocks.
func (l *Logger) Log(level int, event string, fields ...any) {
	if l == nil || level < l.min {
		return
	}
	defer func() {
		if recover() != nil { // closed: the connector is exiting
			l.dropped.Add(1)
		}
	}()
	select {
	case l.lines <- l.format(level, event, fields...):
	default:
		l.dropped.Add(1)
	}
}

// Info logs at info level.
func (l *Logger) Info(event string, fields ...any) { l.Log(LevelInfo, event, fields...) }

// Warning logs at warning level.
func (l *Logger) Warning(event string, fields ...any) { l.Log(LevelWarning, event, fields...) }

// Error logs at error level.
func (l *Logger) Error(event string, fields ...any) { l.Log(LevelError, event, fields...) }

// RateLimited logs one line per interval at most; each line carries the number of occurrences it
// stands for (count) and the total so far.
type RateLimited struct {
	log      *Logger
	level    int
	event    string
	interval time.Duration

	mu      sync.Mutex
	last    time.Time
	pending int
	total   int
}

// NewRateLimited logs event at level at most once per interval.
func NewRateLimited(l *Logger, level int, event string, interval time.Duration) *RateLimited {
	return &RateLimited{log: l, level: level, event: event, interval: interval}
}

// Log counts one occurrence and writes a line when the interval has passed.
func (r *RateLimited) Log(fields ...any) {
	r.mu.Lock()
	r.pending++
	r.total++
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < r.interval {
		r.mu.Unlock()
		return
	}
	r.last = now
	count, total := r.pending, r.total
	r.pending = 0
	r.mu.Unlock()
	r.log.Log(r.level, r.event, append(fields, "count", count, "total", total)...)
}
