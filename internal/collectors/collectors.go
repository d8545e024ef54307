// Package collectors registers process-wide Prometheus collectors into
// Caddy's registry. Caddy gives each config its own registry
// (ctx.GetMetricsRegistry()), while the resolver's and the transport's
// counters live as long as the process (their state outlives reloads), so
// each config registers the same collectors again; this package holds that
// one rule for both.
package collectors

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers cs into reg; a collector registered there already is
// not an error.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}
