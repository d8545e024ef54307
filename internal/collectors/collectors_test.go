package collectors

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRegisterTwice(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"})
	require.NoError(t, Register(reg, c))
	require.NoError(t, Register(reg, c), "again: not an error")
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x_total", Help: "another x"})
	assert.Error(t, Register(reg, other), "a different collector of the same name is")
}
