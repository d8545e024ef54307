package peertest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lookupUser returns the uid and gid of a system user, failing the test if
// the user does not exist.
func lookupUser(t testing.TB, name string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("peertest: user %s: %v", name, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// NewNetns makes a network namespace named "pt-" plus random hex, brings
// its loopback interface up, and deletes it when the test ends (after the
// peers started later in the test have been stopped, since Cleanup runs in
// reverse order). It returns the namespace's name, for SinkOptions.Netns,
// DialNetns and "ip netns exec".
func NewNetns(t testing.TB) string {
	t.Helper()
	Need(t, "ip")
	ip := bin(t, "ip")
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "pt-" + hex.EncodeToString(rnd[:])
	run(t, 10*time.Second, nil, ip, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := runErr(10*time.Second, nil, ip, "netns", "del", name); err != nil {
			t.Errorf("peertest: ip netns del %s: %v\n%s", name, err, out)
		}
	})
	run(t, 10*time.Second, nil, ip, "-n", name, "link", "set", "lo", "up")
	return name
}

// DialNetns connects to addr from inside the named network namespace (as
// made by "ip netns add" or NewNetns), so a test can reach a peer that
// listens in that namespace.
//
// It switches one OS thread into the namespace with setns(2), makes the
// socket there (a socket stays in the namespace it was made in), and lets
// that thread die afterwards instead of returning it to Go's pool: the
// goroutine never calls runtime.UnlockOSThread.
func DialNetns(netns, network, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	if sysSetns < 0 {
		return nil, errors.New("peertest: DialNetns: setns(2) number unknown on this architecture")
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in another namespace now and
		// must not run other goroutines; Go ends it when we return.
		f, err := os.Open(filepath.Join("/var/run/netns", netns))
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if _, _, errno := syscall.Syscall(uintptr(sysSetns), f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
			ch <- result{nil, fmt.Errorf("setns %s: %w", netns, errno)}
			return
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.Dial(network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// listeningIn tells whether the network namespace of process pid has a TCP
// socket in LISTEN state on host:port, by reading /proc/PID/net/tcp{,6}.
// It needs no connection, so it cannot disturb a peer that counts sessions
// or injects faults on connect, and it works for a peer in another network
// namespace.
func listeningIn(pid int, host string, port int) (bool, error) {
	want, err := netip.ParseAddr(host)
	if err != nil {
		return false, err
	}
	file := "tcp"
	if want.Is6() {
		file = "tcp6"
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, file))
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "0A" { // 0A = TCP_LISTEN
			continue
		}
		a, p, ok := parseProcAddr(fields[1])
		if !ok || p != port {
			continue
		}
		if a == want || a.IsUnspecified() {
			return true, nil
		}
	}
	return false, sc.Err()
}

// parseProcAddr parses an address of /proc/net/tcp{,6}: hex address words
// in host byte order (little endian here), a colon, the hex port.
func parseProcAddr(s string) (netip.Addr, int, bool) {
	h, ps, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, false
	}
	port, err := strconv.ParseUint(ps, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, false
	}
	// Each 32-bit word is in host order: reverse the bytes of each word.
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return a.Unmap(), int(port), true
}

// openFiles returns the paths of the files that process pid has open, from
// /proc/PID/fd. A process that has exited has none.
func openFiles(pid int) map[string]bool {
	open := map[string]bool{}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return open
	}
	for _, e := range ents {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil {
			open[l] = true
		}
	}
	return open
}

// readBanner connects to addr (in netns if not "") and reads the first
// reply line, which must start with "220".
func readBanner(ctx context.Context, netns, addr string) error {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(2 * time.Second)
	}
	var c net.Conn
	var err error
	if netns != "" {
		c, err = DialNetns(netns, "tcp", addr, time.Until(dl))
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(dl)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading banner: %w", err)
	}
	if !strings.HasPrefix(line, "220") {
		return fmt.Errorf("banner %q", strings.TrimSpace(line))
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}
