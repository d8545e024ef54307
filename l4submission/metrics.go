package l4submission

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed7b014b84/caddy-smtp/internal/collectors"
)

// The handler's Prometheus metrics, process-wide like the transport's,
// registered into each config's registry by registerMetrics.
var (
	metricsOnce sync.Once
	sessions    prometheus.Counter
	messages    *prometheus.CounterVec
	auths       *prometheus.CounterVec
	// connsRefused counts connections refused by max_connections or
	// max_connections_per_ip.
	connsRefused *prometheus.CounterVec
)

func initMetrics() {
	metricsOnce.Do(func() {
		const ns, sub = "caddy", "smtp_submission"
		sessions = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sessions_total",
			Help: "Client connections served.",
		})
		messages = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_total",
			Help: "Messages received, by the reply to their data: queued (250), deferred (4xx) or refused (5xx).",
		}, []string{"result"})
		auths = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "auth_total",
			Help: "AUTH attempts, by result: success, failure (wrong password or unknown user), throttled (refused without a password comparison).",
		}, []string{"result"})
		connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "connections_refused_total",
			Help: "Connections refused with 421 at once, by the limit they would have passed (max_connections, max_connections_per_ip).",
		}, []string{"limit"})
	})
}

// registerMetrics registers the handler's metrics into reg (Caddy's
// ctx.GetMetricsRegistry()); registering them again is not an error.
func registerMetrics(reg prometheus.Registerer) error {
	initMetrics()
	return collectors.Register(reg, sessions, messages, auths, connsRefused)
}

func metricSession() {
	initMetrics()
	sessions.Inc()
}

func metricMessage(result string) {
	initMetrics()
	messages.WithLabelValues(result).Inc()
}

// The results of an AUTH, for metrics and logs: success; failure (a
// wrong password or an unknown user); throttled (refused without a
// comparison: the client is locked out, or too many comparisons were
// running).
const (
	authSuccess   = "success"
	authFailure   = "failure"
	authThrottled = "throttled"
)

func metricAuth(result string) {
	initMetrics()
	auths.WithLabelValues(result).Inc()
}

// metricConnRefused counts a connection refused by a connection limit.
func metricConnRefused(limit string) {
	initMetrics()
	connsRefused.WithLabelValues(limit).Inc()
}
