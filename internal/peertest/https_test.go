package peertest

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/procstat"
)

func TestHTTPS(t *testing.T) {
	var pgid int
	var dir, addr string
	t.Run("serve", func(t *testing.T) {
		ca := NewCA(t, "https test CA")
		h := StartHTTPS(t, HTTPSOptions{Host: "127.85.0.9", Leaf: ca.Issue(t, "www.https.test"), Responses: map[string][]byte{
			"/a/b.txt": HTTPResponse(200, []string{"Content-Type: text/plain", "X-Test: 1"}, []byte("hello\n")),
		}})
		pgid, dir, addr = h.proc.cmd.Process.Pid, h.Dir, h.Addr
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: ca.Pool(), ServerName: "www.https.test"},
			DisableKeepAlives: true,
		}}
		get := func(path string) (*http.Response, string) {
			resp, err := client.Get("https://" + h.Addr + path)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp, string(b)
		}
		resp, body := get("/a/b.txt")
		assert.Equal(t, 200, resp.StatusCode)
		assert.Equal(t, "1", resp.Header.Get("X-Test"))
		assert.Equal(t, "hello\n", body)

		h.SetResponse(t, "/a/b.txt", HTTPResponse(302, []string{"Location: /c"}, nil))
		client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, _ = get("/a/b.txt")
		assert.Equal(t, 302, resp.StatusCode)
		assert.Equal(t, "/c", resp.Header.Get("Location"))
		assert.Contains(t, h.Log(), "FILE:a/b.txt")
	})
	assert.Empty(t, procstat.GroupMembers(pgid), "s_server still alive")
	assert.NoDirExists(t, dir)
	l, err := net.Listen("tcp", addr)
	if assert.NoError(t, err, "port still taken") {
		_ = l.Close()
	}
}
