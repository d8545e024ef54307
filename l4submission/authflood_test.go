package l4submission

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestAuthFlood is the benchmark of issue 10 (item 8): clients sending
// wrong passwords for 30 seconds while a legitimate client submits a
// message every second, against users hashed as `caddy hash-password`
// does (bcrypt, cost 14). It reports the CPU time this process (Caddy
// with its handler, and the clients, which cost little) used, and the
// legitimate client's latency. It takes over a minute and both cores, so
// it runs only with L4SUBMISSION_AUTH_FLOOD=1; L4SUBMISSION_AUTH_FLOOD_SECONDS
// changes its length.
func TestAuthFlood(t *testing.T) {
	if os.Getenv("L4SUBMISSION_AUTH_FLOOD") == "" {
		t.Skip("a benchmark: set L4SUBMISSION_AUTH_FLOOD=1 to run it")
	}
	seconds := 30
	if s := os.Getenv("L4SUBMISSION_AUTH_FLOOD_SECONDS"); s != "" {
		_, err := fmt.Sscan(s, &seconds)
		require.NoError(t, err)
	}
	sink := peertest.StartSink(t, peertest.SinkOptions{NoDump: true})
	ca := peertest.NewCA(t, "auth flood CA")
	leaf := ca.Issue(t, "localhost", "127.0.0.1")
	port := peertest.FreePort(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(labPassword), 14)
	require.NoError(t, err)
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(t.TempDir(), "storage")},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level":  "ERROR",
			"writer": map[string]any{"output": "discard"},
		}}},
		"apps": map[string]any{
			"tls": map[string]any{"certificates": map[string]any{
				"load_files": []any{map[string]any{"certificate": leaf.CertFile, "key": leaf.KeyFile}},
			}},
			"smtp": map[string]any{
				"hostname": "relay.test",
				"next_hop": []any{map[string]any{"else": "sink"}},
				"remotes":  map[string]any{"sink": map[string]any{"address": "127.0.0.1", "port": sink.Port}},
			},
			"layer4": map[string]any{"servers": map[string]any{"submission": map[string]any{
				"listen": []string{fmt.Sprintf("127.0.0.1:%d", port)},
				"routes": []any{map[string]any{"handle": []any{map[string]any{
					"handler": "smtp_submission",
					"tls":     map[string]any{},
					"users": []any{
						map[string]any{"username": labUser, "password": string(hash)},
						map[string]any{"username": "bob", "password": string(hash)},
					},
					"relay_networks": []string{"192.0.2.0/24"},
				}}}},
			}}},
		},
	}
	raw, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, caddy.Load(raw, true))
	t.Cleanup(func() { _ = caddy.Stop() })

	tlsConfig := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	// dial opens an SMTP session from a loopback address, up to AUTH.
	dial := func(local string) (*smtp.Client, error) {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return nil, err
		}
		_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
		c, err := smtp.NewClientStartTLS(conn, tlsConfig)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return c, nil
	}
	send := func(user string, i int) error {
		c, err := dial("127.0.0.1")
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", user, labPassword)); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
		msg := fmt.Sprintf("From: sender@example.org\r\nTo: rcpt@good.test\r\nSubject: %d\r\n\r\nmessage %d\r\n", i, i)
		if err := c.SendMail("sender@example.org", []string{"rcpt@good.test"}, strings.NewReader(msg)); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return c.Quit()
	}

	for _, tt := range []struct {
		name      string
		attackers []string
		// cold: the legitimate client did not log in before the flood.
		cold bool
	}{
		{"4 clients from 4 addresses", []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}, false},
		{"4 clients from one address", []string{"127.0.0.6", "127.0.0.6", "127.0.0.6", "127.0.0.6"}, false},
		{"4 clients from 4 addresses, first login during the flood", []string{"127.0.0.7", "127.0.0.8", "127.0.0.9", "127.0.0.10"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The legitimate client has logged in before: the steady
			// state; or it logs in first during the flood, as bob.
			user := labUser
			if tt.cold {
				user = "bob"
			} else {
				start := time.Now()
				require.NoError(t, send(user, -1))
				t.Logf("first message before the flood (one comparison): %v", time.Since(start).Round(time.Millisecond))
			}
			// Whatever the last run left running is done.
			time.Sleep(3 * time.Second)

			var before syscall.Rusage
			require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &before))
			deadline := time.Now().Add(time.Duration(seconds) * time.Second)
			// The attackers run in a process of their own, so that the CPU
			// they use is not counted as Caddy's.
			attack := exec.Command(os.Args[0], "-test.run=^TestAuthFloodAttackers$", "-test.count=1")
			attack.Env = append(os.Environ(), fmt.Sprintf("%s=%d;%d;%s", attackersEnv, port, seconds, strings.Join(tt.attackers, ",")))
			var attackOut strings.Builder
			attack.Stdout, attack.Stderr = &attackOut, &attackOut
			require.NoError(t, attack.Start())
			// Let the attackers start.
			time.Sleep(200 * time.Millisecond)
			var latencies []time.Duration
			var failures []string
			var first string
			for i := 0; time.Now().Before(deadline); i++ {
				next := time.Now().Add(time.Second)
				start := time.Now()
				err := send(user, i)
				if i == 0 {
					first = fmt.Sprintf("%v (%v)", time.Since(start).Round(time.Millisecond), err)
				}
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					latencies = append(latencies, time.Since(start))
				}
				time.Sleep(time.Until(next))
			}
			require.NoError(t, attack.Wait(), attackOut.String())
			var after syscall.Rusage
			require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &after))
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			ru := attack.ProcessState.SysUsage().(*syscall.Rusage)
			attackCPU := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			var replies string
			for _, line := range strings.Split(attackOut.String(), "\n") {
				if r, ok := strings.CutPrefix(strings.TrimSpace(line), "replies: "); ok {
					replies = r
				}
			}

			sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
			require.NotEmpty(t, latencies, "failures: %v", failures)
			pct := func(p float64) time.Duration {
				return latencies[min(len(latencies)-1, int(p*float64(len(latencies))))].Round(time.Millisecond)
			}
			t.Logf("%d s, attackers from %v: replies to their AUTH: %s", seconds, tt.attackers, replies)
			t.Logf("CPU of Caddy's process: %v, %.2f cores on average (the machine has %d); the attackers' process: %v",
				cpu.Round(10*time.Millisecond), cpu.Seconds()/float64(seconds), runtime.NumCPU(), attackCPU.Round(10*time.Millisecond))
			t.Logf("legitimate client: %d messages, %d failed %v; latency median %v, p90 %v, max %v; the first message: %s",
				len(latencies), len(failures), failures, pct(0.5), pct(0.9), latencies[len(latencies)-1].Round(time.Millisecond), first)
		})
	}
}

// attackersEnv tells TestAuthFloodAttackers to run: "port;seconds;addr,addr...".
const attackersEnv = "L4SUBMISSION_AUTH_FLOOD_ATTACKERS"

// TestAuthFloodAttackers is the attackers' side of TestAuthFlood, which
// runs it in a process of its own: one client per address given, each
// sending AUTH with wrong passwords as fast as the server answers, on a
// new connection whenever the server closes one.
func TestAuthFloodAttackers(t *testing.T) {
	spec := os.Getenv(attackersEnv)
	if spec == "" {
		t.Skip("run by TestAuthFlood")
	}
	parts := strings.Split(spec, ";")
	require.Len(t, parts, 3)
	var port, seconds int
	_, err := fmt.Sscan(parts[0], &port)
	require.NoError(t, err)
	_, err = fmt.Sscan(parts[1], &seconds)
	require.NoError(t, err)
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	tlsConfig := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // an attacker does not care
	var mu sync.Mutex
	replies := map[string]int{}
	count := func(k string) {
		mu.Lock()
		replies[k]++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for i, local := range strings.Split(parts[2], ",") {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); {
				d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
				conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					count("dial error")
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_ = conn.SetDeadline(deadline.Add(10 * time.Second))
				c, err := smtp.NewClientStartTLS(conn, tlsConfig)
				if err != nil {
					count("starttls error")
					conn.Close()
					continue
				}
				for time.Now().Before(deadline) {
					n++
					err := c.Auth(sasl.NewPlainClient("", labUser, fmt.Sprintf("guess %d-%d", i, n)))
					code := "other"
					if e, ok := err.(*smtp.SMTPError); ok {
						code = fmt.Sprint(e.Code)
					} else if err == nil {
						code = "235"
					}
					count(code)
					if code != "535" && code != "454" {
						break
					}
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("replies: %v\n", replies)
}
