package transport

import (
	"crypto/tls"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed7b014b84/caddy-smtp/internal/collectors"
)

// The transport's Prometheus metrics, process-wide like the connection
// pool, registered into each config's registry by RegisterMetrics.
var (
	metricsOnce sync.Once
	connections *prometheus.CounterVec
	replies     *prometheus.CounterVec
	sessionErrs prometheus.Counter
)

func initMetrics() {
	metricsOnce.Do(func() {
		const ns, sub = "caddy", "smtp"
		connections = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_total",
			Help: "SMTP/LMTP sessions: opened (by TLS version, \"none\" without TLS) and reused from the pool.",
		}, []string{"event", "tls"})
		replies = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "replies_total",
			Help: "Server replies by class (2xx, 3xx, 4xx, 5xx).",
		}, []string{"class"})
		sessionErrs = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "session_setup_failures_total",
			Help: "Sessions that failed before they could carry a message.",
		})
	})
}

// RegisterMetrics registers the transport's metrics into reg (Caddy's
// ctx.GetMetricsRegistry()); registering them again is not an error.
func RegisterMetrics(reg prometheus.Registerer) error {
	initMetrics()
	return collectors.Register(reg, connections, replies, sessionErrs)
}

func tlsLabel(st *tls.ConnectionState) string {
	if st == nil {
		return "none"
	}
	return tls.VersionName(st.Version)
}

func metricConnOpened(st *tls.ConnectionState) {
	initMetrics()
	connections.WithLabelValues("opened", tlsLabel(st)).Inc()
}

func metricConnReused(st *tls.ConnectionState) {
	initMetrics()
	connections.WithLabelValues("reused", tlsLabel(st)).Inc()
}

func metricSessionFailed() {
	initMetrics()
	sessionErrs.Inc()
}

var classLabels = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func metricReply(r Reply) {
	initMetrics()
	i := r.Code/100 - 1
	if i < 0 || i >= len(classLabels) {
		replies.WithLabelValues(strconv.Itoa(r.Code)).Inc()
		return
	}
	replies.WithLabelValues(classLabels[i]).Inc()
}
