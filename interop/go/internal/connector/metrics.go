package connector

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the exchange_connector_* series of docs/sut-manifest.md. The registry they are
// registered with is expected to hold client_golang's Go and process collectors as well
// (go_goroutines, process_open_fds, process_resident_memory_bytes).
type Metrics struct {
	Serving              prometheus.Gauge
	UpstreamConnections  prometheus.Gauge
	UpstreamReconnects   prometheus.Counter
	Subscribers          *prometheus.GaugeVec
	Dropped              *prometheus.CounterVec
	Invalid              *prometheus.CounterVec
	Sent                 *prometheus.CounterVec
	UpstreamMessages     *prometheus.CounterVec
	DataAge              prometheus.Gauge
	UpstreamLag          prometheus.Gauge
	Malformed            *prometheus.CounterVec
	AuthRejected         *prometheus.CounterVec
	Refused              *prometheus.CounterVec
	CallsInFlight        prometheus.Gauge
	UpstreamGetPositions prometheus.Counter
	GetPositionsShared   prometheus.Counter
	Stalls               prometheus.Counter
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Serving:             prometheus.NewGauge(prometheus.GaugeOpts{Name: "exchange_connector_serving", Help: "1 while health reads SERVING"}),
		UpstreamConnections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "exchange_connector_upstream_connections", Help: "upstream exchange connections held"}),
		UpstreamReconnects:  prometheus.NewCounter(prometheus.CounterOpts{Name: "exchange_connector_upstream_reconnects_total", Help: "upstream reconnections"}),
		Subscribers:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "exchange_connector_subscribers", Help: "subscribers held now"}, []string{"topic"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "exchange_connector_subscribers_dropped_total", Help: "subscribers ended with RESOURCE_EXHAUSTED for falling behind",
		}, []string{"topic"}),
		Invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "exchange_connector_upstream_invalid_messages_total", Help: "upstream messages refused by validation (never forwarded)",
		}, []string{"topic"}),
		Sent:             prometheus.NewCounterVec(prometheus.CounterOpts{Name: "exchange_connector_messages_sent_total", Help: "updates written to subscribers"}, []string{"topic"}),
		UpstreamMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "exchange_connector_upstream_messages_total", Help: "updates read upstream"}, []string{"topic"}),
		DataAge:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "exchange_connector_data_age_seconds", Help: "seconds since the upstream's last sign of life"}),
		UpstreamLag:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "exchange_connector_upstream_lag_seconds", Help: "how far the upstream read trails the exchange's stamps"}),
		Malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "exchange_connector_malformed_requests_total", Help: "requests refused as not parseable",
		}, []string{"method"}),
		AuthRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "exchange_connector_auth_rejected_total", Help: "calls refused UNAUTHENTICATED",
		}, []string{"reason"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "exchange_connector_calls_refused_total", Help: "new calls refused: overloaded (too many in flight, or shedding) or shutting_down",
		}, []string{"reason"}),
		CallsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "exchange_connector_calls_in_flight", Help: "ExchangeService calls and streams in progress"}),
		UpstreamGetPositions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "exchange_connector_upstream_get_positions_calls_total", Help: "GetPositions calls made to the exchange",
		}),
		GetPositionsShared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "exchange_connector_get_positions_shared_total", Help: "GetPositions calls answered by a call already in flight",
		}),
		Stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "exchange_connector_stalls_total", Help: "times the connector's process stood still (no CPU) for more than 0.5 s",
		}),
	}
	reg.MustRegister(m.Serving, m.UpstreamConnections, m.UpstreamReconnects, m.Subscribers, m.Dropped, m.Invalid,
		m.Sent, m.UpstreamMessages, m.DataAge, m.UpstreamLag, m.Malformed, m.AuthRejected, m.Refused,
		m.CallsInFlight, m.UpstreamGetPositions, m.GetPositionsShared, m.Stalls)
	for _, topic := range []string{TopicAccount, TopicPositions} {
		m.Subscribers.WithLabelValues(topic).Set(0)
		m.Dropped.WithLabelValues(topic)
		m.Invalid.WithLabelValues(topic)
		m.Sent.WithLabelValues(topic)
	}
	for _, reason := range []string{"missing", "invalid"} {
		m.AuthRejected.WithLabelValues(reason)
	}
	for _, reason := range []string{"overloaded", "shutting_down"} {
		m.Refused.WithLabelValues(reason)
	}
	return m
}
