package peertest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// HTTPSOptions configures StartHTTPS.
type HTTPSOptions struct {
	// Host is the loopback address to listen on, such as "127.85.0.1";
	// "" means 127.0.0.1.
	Host string
	// Port is the port to listen on; 0 picks a free one. (Servers on
	// several addresses can share a port, as policy hosts of several
	// domains share 443.)
	Port int
	// Leaf is the server's certificate; its chain (leaf, then CA) is sent.
	Leaf *Leaf
	// Responses maps URL paths ("/.well-known/mta-sts.txt") to what the
	// server sends back for them: the whole HTTP response, status line,
	// headers and body (see HTTPResponse). A path not listed gets
	// OpenSSL's own "Error opening" text.
	Responses map[string][]byte
}

// HTTPS is a running "openssl s_server -HTTP": a real TLS stack (OpenSSL's)
// that answers each GET with a response file written in advance, byte for
// byte, so that tests can serve exactly the status, headers and body they
// need (a redirect, an oversized body, a wrong media type).
type HTTPS struct {
	// Addr is "host:port".
	Addr string
	// Host is the address listened on; Port is its port.
	Host string
	Port int
	// Dir is the instance directory, the server's working directory: the
	// response for /PATH is the file Dir/PATH.
	Dir string

	proc *proc
}

// StartHTTPS starts "openssl s_server -HTTP" on Host with Leaf's chain and
// key, serving Responses, and waits until it completes a TLS handshake
// verified against the leaf's CA. It is stopped and its files removed when
// the test ends.
//
// s_server handles one connection at a time, reads only the request line
// and closes the connection after the response (as HTTP/1.0 does); that is
// enough for a client that makes one request per connection, as an MTA-STS
// policy fetch does.
func StartHTTPS(t testing.TB, o HTTPSOptions) *HTTPS {
	t.Helper()
	Need(t, "openssl")
	if o.Leaf == nil {
		t.Fatalf("peertest: StartHTTPS needs a Leaf")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = FreePort(t)
	}
	h := &HTTPS{Host: o.Host, Port: o.Port, Dir: instanceDir(t, "https")}
	h.Addr = net.JoinHostPort(h.Host, strconv.Itoa(h.Port))
	for path, resp := range o.Responses {
		h.SetResponse(t, path, resp)
	}
	logDir := instanceDir(t, "https-log")
	// s_server has no option for its working directory: a shell changes
	// to it and replaces itself with openssl, which so stays the leader of
	// the process group that the cleanup stops.
	h.proc = startProc(t, "openssl s_server "+h.Addr, filepath.Join(logDir, "s_server.log"), 2*time.Second, nil, nil,
		"/bin/sh", "-c", `cd "$0" && exec "$@"`, h.Dir,
		bin(t, "openssl"), "s_server", "-HTTP", "-accept", h.Addr,
		"-cert", o.Leaf.CertFile, "-key", o.Leaf.KeyFile, "-cert_chain", o.Leaf.ChainFile)
	roots := x509.NewCertPool()
	if len(o.Leaf.Cert.Certificate) > 1 {
		if ca, err := x509.ParseCertificate(o.Leaf.Cert.Certificate[len(o.Leaf.Cert.Certificate)-1]); err == nil {
			roots.AddCert(ca)
		}
	}
	h.proc.waitReady(t, func(ctx context.Context) error {
		d := tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: o.Leaf.X509.Subject.CommonName}}
		c, err := d.DialContext(ctx, "tcp", h.Addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return h
}

// SetResponse replaces what the server sends for path, from the next
// request on.
func (h *HTTPS) SetResponse(t testing.TB, path string, resp []byte) {
	t.Helper()
	rel := strings.TrimPrefix(path, "/")
	if rel == "" || strings.Contains(rel, "..") {
		t.Fatalf("peertest: bad HTTPS response path %q", path)
	}
	file := filepath.Join(h.Dir, filepath.FromSlash(rel))
	mkdirs(t, "", filepath.Dir(file))
	// Write then rename, so that a request never reads half a file.
	tmp := file + ".tmp"
	writeFile(t, tmp, resp)
	if err := os.Rename(tmp, file); err != nil {
		t.Fatalf("peertest: %v", err)
	}
}

// Log returns what s_server printed.
func (h *HTTPS) Log() string { return readFile(h.proc.logs[0]) }

// HTTPResponse builds a whole HTTP/1.0 response for HTTPS.Responses: the
// status line for code, the given headers ("Name: value" each), a
// Content-Length and "Connection: close", and body.
func HTTPResponse(code int, headers []string, body []byte) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.0 %d %s\r\n", code, http.StatusText(code))
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	return append([]byte(b.String()), body...)
}
