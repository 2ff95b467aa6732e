package connector

import (
	"encoding/json"
	"io"
	"strings"
	"sync"
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
type Logger struct {
	mu  sync.Mutex
	w   io.Writer
	min int
}

// NewLogger logs to w at level min and above.
func NewLogger(w io.Writer, min int) *Logger { return &Logger{w: w, min: min} }

// Log writes one line; fields are name/value pairs.
func (l *Logger) Log(level int, event string, fields ...any) {
	if l == nil || level < l.min {
		return
	}
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
		data = []byte(`{"level":"error","event":"log_failed"}`)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(append(data, '\n'))
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
