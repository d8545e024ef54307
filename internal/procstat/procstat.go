// Package procstat reads the kernel's process table (/proc/PID/stat) and
// stops process groups. The test harness and the benchmark command both
// start peers (Postfix, Dovecot) that fork daemons, and need to find a
// process group's or a session's members and their CPU times, and to stop
// the whole group; this package holds that once.
package procstat

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// Proc is what /proc/PID/stat says about one process.
type Proc struct {
	PID     int
	Comm    string
	State   string // R, S, D, Z (zombie), X (dead), ...
	PPID    int
	PGRP    int
	Session int
	// CPU is utime+stime+cutime+cstime: the process's own CPU and that of
	// the children it has reaped.
	CPU time.Duration
}

// Zombie reports whether the process has exited and waits to be reaped.
func (p Proc) Zombie() bool { return p.State == "Z" || p.State == "X" }

// ClockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const ClockTicks = 100

// All returns every process the kernel lists; processes that end while
// they are read are left out.
func All() []Proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		if p, ok := parse(pid, b); ok {
			out = append(out, p)
		}
	}
	return out
}

// parse reads "pid (comm) state ppid pgrp session tty tpgid flags minflt
// cminflt majflt cmajflt utime stime cutime cstime ..."; comm may hold
// spaces and parentheses, so the fields are counted from the last ')'.
func parse(pid int, b []byte) (Proc, bool) {
	i := bytes.LastIndexByte(b, ')')
	j := bytes.IndexByte(b, '(')
	if i < 0 || j < 0 || j > i {
		return Proc{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return Proc{}, false
	}
	p := Proc{PID: pid, Comm: string(b[j+1 : i]), State: f[0]}
	p.PPID, _ = strconv.Atoi(f[1])
	p.PGRP, _ = strconv.Atoi(f[2])
	p.Session, _ = strconv.Atoi(f[3])
	var ticks int64
	for _, k := range []int{11, 12, 13, 14} {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += v
	}
	p.CPU = time.Duration(ticks) * time.Second / ClockTicks
	return p, true
}
