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
			Help: "Messages received, by the reply to their data: delivered (250), deferred (4xx) or refused (5xx).",
		}, []string{"result"})
		auths = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "auth_total",
			Help: "AUTH attempts that got to a password check, by result (success, failure).",
		}, []string{"result"})
	})
}

// registerMetrics registers the handler's metrics into reg (Caddy's
// ctx.GetMetricsRegistry()); registering them again is not an error.
func registerMetrics(reg prometheus.Registerer) error {
	initMetrics()
	return collectors.Register(reg, sessions, messages, auths)
}

func metricSession() {
	initMetrics()
	sessions.Inc()
}

func metricMessage(result string) {
	initMetrics()
	messages.WithLabelValues(result).Inc()
}

func metricAuth(ok bool) {
	initMetrics()
	result := "failure"
	if ok {
		result = "success"
	}
	auths.WithLabelValues(result).Inc()
}
