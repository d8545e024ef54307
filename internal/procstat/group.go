package procstat

import (
	"fmt"
	"syscall"
	"time"
)

// GroupMembers returns the pids of the processes of a process group that
// are not zombies.
func GroupMembers(pgid int) []int {
	var pids []int
	for _, p := range All() {
		if p.PGRP == pgid && !p.Zombie() {
			pids = append(pids, p.PID)
		}
	}
	return pids
}

// StopGroup ends the process group pgid, whose leader's exit closes done:
// SIGTERM, then SIGKILL after grace (at once if grace is 0), then SIGKILL
// to any member still alive until none is. Children of the leader (Postfix
// and Dovecot daemons) may outlive it for a moment; the kernel does not
// reuse a group id while the group has members, so signalling -pgid is
// safe. Orphans are reaped by init, which may take a second: zombies do
// not count. Every wait is bounded; the error says what could not be
// stopped.
func StopGroup(pgid int, done <-chan struct{}, grace time.Duration) error {
	select {
	case <-done:
	default:
		if grace > 0 {
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
		}
		select {
		case <-done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				return fmt.Errorf("pid %d did not exit after SIGKILL", pgid)
			}
		}
	}
	for i := 0; ; i++ {
		live := GroupMembers(pgid)
		if len(live) == 0 {
			return nil
		}
		if i >= 100 {
			return fmt.Errorf("processes %v of group %d still alive after 5 s", live, pgid)
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		time.Sleep(50 * time.Millisecond)
	}
}
