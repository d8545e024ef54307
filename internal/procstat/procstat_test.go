package procstat

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	line := []byte("4242 (smtpd (x) y) S 1 4200 4100 0 -1 4194560 100 0 0 0 250 50 10 5 20 0 1 0 100 0 0")
	p, ok := parse(4242, line)
	require.True(t, ok)
	assert.Equal(t, Proc{PID: 4242, Comm: "smtpd (x) y", State: "S", PPID: 1, PGRP: 4200, Session: 4100, CPU: 3150 * time.Millisecond}, p)
	assert.False(t, p.Zombie())
	_, ok = parse(1, []byte("1 (init"))
	assert.False(t, ok)
}

func TestAllHasThisProcess(t *testing.T) {
	var me *Proc
	for _, p := range All() {
		if p.PID == os.Getpid() {
			me = &p
		}
	}
	require.NotNil(t, me)
	assert.Equal(t, os.Getppid(), me.PPID)
}
