package procstat

import (
	"os"
	"os/exec"
	"syscall"
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

func TestStopGroup(t *testing.T) {
	// A shell in its own session that starts a child and waits: the
	// group outlives nothing, and both are gone after StopGroup.
	cmd := exec.Command("sh", "-c", "sleep 60 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	pgid := cmd.Process.Pid
	require.Eventually(t, func() bool { return len(GroupMembers(pgid)) == 2 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, StopGroup(pgid, done, time.Second))
	assert.Empty(t, GroupMembers(pgid))
}
