package resolver

import (
	"sync"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed7b014b84/caddy-smtp/internal/collectors"
)

// The resolver's Prometheus metrics. They are process-wide, like the
// resolvers in the pool, and registered into each config's registry by
// RegisterMetrics.
var (
	metricsOnce sync.Once
	queries     *prometheus.CounterVec
	cacheHits   prometheus.Counter
	rcodes      *prometheus.CounterVec
)

func initMetrics() {
	metricsOnce.Do(func() {
		const ns, sub = "caddy", "smtp_dns"
		queries = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "queries_total",
			Help: "DNS queries sent, by record type and transport.",
		}, []string{"type", "transport"})
		cacheHits = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "cache_hits_total",
			Help: "DNS questions answered from the cache.",
		})
		rcodes = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "errors_total",
			Help: "DNS answers that were not NOERROR, by rcode.",
		}, []string{"rcode"})
	})
}

// RegisterMetrics registers the resolver's metrics into reg (Caddy's
// ctx.GetMetricsRegistry()); registering them again is not an error.
func RegisterMetrics(reg prometheus.Registerer) error {
	initMetrics()
	return collectors.Register(reg, queries, cacheHits, rcodes)
}

func metricQuery(qtype uint16, transport string) {
	initMetrics()
	queries.WithLabelValues(dns.TypeToString[qtype], transport).Inc()
}

func metricCacheHit() {
	initMetrics()
	cacheHits.Inc()
}

func metricErrors(rcode int) {
	if rcode == dns.RcodeSuccess {
		return
	}
	initMetrics()
	rcodes.WithLabelValues(dns.RcodeToString[rcode]).Inc()
}
