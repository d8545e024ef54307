package queue

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/seed7b014b84/caddy-smtp/internal/collectors"
)

// The queue's Prometheus metrics, process-wide like the queue itself,
// registered into each config's registry by RegisterMetrics.
var (
	metricsOnce  sync.Once
	outcomes     *prometheus.CounterVec
	queuedTotal  prometheus.Counter
	storeLatency *prometheus.HistogramVec
	byState      *prometheus.GaugeVec
	oldestAge    prometheus.Gauge
)

func initMetrics() {
	metricsOnce.Do(func() {
		const ns, sub = "caddy", "smtp_queue"
		outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "attempts_total",
			Help: "Recipients' delivery attempts by outcome: delivered, deferred, failed.",
		}, []string{"outcome"})
		queuedTotal = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "queued_total",
			Help: "Messages taken into the queue.",
		})
		storeLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "store_commit_seconds",
			Help:    "Time to commit a batch of queue writes to stable storage (fsync included).",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}, []string{"store"})
		byState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "messages",
			Help: "Messages queued, by state (pending, deferred, held, failed).",
		}, []string{"state"})
		oldestAge = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "oldest_age_seconds",
			Help: "Age of the oldest queued message.",
		})
	})
}

// RegisterMetrics registers the queue's metrics into reg (Caddy's
// ctx.GetMetricsRegistry()); registering them again is not an error.
func RegisterMetrics(reg prometheus.Registerer) error {
	initMetrics()
	return collectors.Register(reg, outcomes, queuedTotal, storeLatency, byState, oldestAge)
}

// ObserveCommit records how long a store took to commit a batch; stores
// call it.
func ObserveCommit(store string, d time.Duration) {
	initMetrics()
	storeLatency.WithLabelValues(store).Observe(d.Seconds())
}

// counters are a queue's contributions to the metrics.
type counters struct{}

func (counters) queued() {
	initMetrics()
	queuedTotal.Inc()
}

func (counters) outcome(s State) {
	initMetrics()
	outcomes.WithLabelValues(string(s)).Inc()
}

// UpdateGauges sets the state gauges from the store's counts; the app calls
// it periodically.
func (q *Queue) UpdateGauges(st Stats, now time.Time) {
	initMetrics()
	for _, s := range []State{Pending, Deferred, Held, Failed} {
		byState.WithLabelValues(string(s)).Set(float64(st.ByState[s]))
	}
	if st.Oldest.IsZero() {
		oldestAge.Set(0)
	} else {
		oldestAge.Set(ageOf(now, st.Oldest).Seconds())
	}
}
