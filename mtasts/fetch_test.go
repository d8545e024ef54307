package mtasts

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestFetch fetches policies from OpenSSL's s_server, found through Knot
// and unbound, and checks every rule of a fetch against it.
func TestFetch(t *testing.T) {
	l := startLab(t)
	ctx := t.Context()
	f := l.fetcher()
	serve := func(t *testing.T, resp []byte) {
		l.https.SetResponse(t, WellKnownPath, resp)
		t.Cleanup(func() { l.https.SetResponse(t, WellKnownPath, policyResponse(policyV1)) })
	}

	t.Run("ok", func(t *testing.T) {
		before := time.Now()
		p, err := f.Fetch(ctx, "STS.test.")
		require.NoError(t, err)
		assert.Equal(t, "STSv1", p.Version)
		assert.Equal(t, ModeEnforce, p.Mode)
		assert.Equal(t, []string{"mx1.sts.test", "*.mx.sts.test"}, p.MX)
		assert.Equal(t, 24*time.Hour, p.MaxAge)
		assert.Empty(t, p.ID, "the id is the cache's business")
		assert.WithinRange(t, p.Fetched, before, time.Now())
		assert.Contains(t, l.https.Log(), "FILE:.well-known/mta-sts.txt", "the policy came from s_server")
	})
	t.Run("exactly 64 KiB is accepted", func(t *testing.T) {
		body := policyV1 + "pad: " + strings.Repeat("x", MaxPolicySize-len(policyV1)-len("pad: \n")) + "\n"
		require.Len(t, body, MaxPolicySize)
		serve(t, policyResponse(body))
		p, err := f.Fetch(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, ModeEnforce, p.Mode)
	})
	t.Run("over 64 KiB is refused, by Content-Length", func(t *testing.T) {
		serve(t, policyResponse(policyV1+"pad: "+strings.Repeat("x", MaxPolicySize)+"\n"))
		_, err := f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrTooLarge)
		assert.True(t, IsPermanent(err))
		assert.ErrorContains(t, err, "Content-Length")
	})
	t.Run("over 64 KiB is refused, without Content-Length", func(t *testing.T) {
		serve(t, []byte("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"+policyV1+strings.Repeat("pad: xxxxxxxxxxxxxxxxxxxxxxxxxx\n", 3000)))
		_, err := f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrTooLarge)
		assert.NotContains(t, err.Error(), "Content-Length")
	})
	t.Run("a redirect is not followed", func(t *testing.T) {
		serve(t, peertest.HTTPResponse(301, []string{"Location: https://mta-sts.sts.test/elsewhere.txt"}, nil))
		l.https.SetResponse(t, "/elsewhere.txt", policyResponse(policyV2))
		_, err := f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrStatus)
		assert.True(t, IsPermanent(err))
		assert.ErrorContains(t, err, "301 Moved Permanently to https://mta-sts.sts.test/elsewhere.txt (redirects are not followed)")
		assert.NotContains(t, l.https.Log(), "FILE:elsewhere.txt")
	})
	t.Run("404 is permanent, 503 temporary", func(t *testing.T) {
		serve(t, peertest.HTTPResponse(404, nil, nil))
		_, err := f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrStatus)
		assert.True(t, IsPermanent(err))
		serve(t, peertest.HTTPResponse(503, nil, nil))
		_, err = f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrStatus)
		assert.True(t, IsTemporary(err))
	})
	t.Run("media type must be text/plain", func(t *testing.T) {
		serve(t, peertest.HTTPResponse(200, []string{"Content-Type: text/html"}, []byte(policyV1)))
		_, err := f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrMediaType)
		serve(t, peertest.HTTPResponse(200, nil, []byte(policyV1)))
		_, err = f.Fetch(ctx, labDomain)
		require.ErrorIs(t, err, ErrMediaType, "no Content-Type at all")
		serve(t, peertest.HTTPResponse(200, []string{"Content-Type: TEXT/Plain; charset=us-ascii; x=y"}, []byte(policyV1)))
		_, err = f.Fetch(ctx, labDomain)
		require.NoError(t, err, "parameters are ignored, the type's case too")
	})
	t.Run("a malformed policy is a permanent error naming the line", func(t *testing.T) {
		serve(t, policyResponse("version: STSv1\nmode: always\n"))
		_, err := f.Fetch(ctx, labDomain)
		var se *SyntaxError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 2, se.Line)
		assert.True(t, IsPermanent(err))
	})
	t.Run("a certificate from another CA fails PKIX", func(t *testing.T) {
		other := *f
		other.RootCAs = peertest.NewCA(t, "another CA").Pool()
		_, err := other.Fetch(ctx, labDomain)
		require.Error(t, err)
		assert.ErrorContains(t, err, "certificate signed by unknown authority")
		assert.True(t, IsPermanent(err))
	})
	t.Run("a certificate for another name fails PKIX", func(t *testing.T) {
		// mta-sts.alias.test resolves to the lab's server, whose
		// certificate does not name it.
		other := *f
		other.DNS = aliasDNS{Resolver: f.DNS, alias: "mta-sts.alias.test", target: "mta-sts." + labDomain}
		_, err := other.Fetch(ctx, "alias.test")
		require.Error(t, err)
		assert.ErrorContains(t, err, "certificate is valid for mta-sts.sts.test, not mta-sts.alias.test")
		assert.True(t, IsPermanent(err))
	})
	t.Run("a policy host without address is permanent", func(t *testing.T) {
		_, err := f.Fetch(ctx, "nohost."+labDomain)
		require.Error(t, err)
		assert.ErrorContains(t, err, "no such domain")
		assert.True(t, IsPermanent(err))
	})
	t.Run("a refused connection is temporary", func(t *testing.T) {
		other := *f
		other.Port = peertest.FreePort(t)
		_, err := other.Fetch(ctx, labDomain)
		require.Error(t, err)
		assert.ErrorContains(t, err, "connection refused")
		assert.True(t, IsTemporary(err))
	})
	t.Run("a failing DNS server is temporary", func(t *testing.T) {
		other := *f
		other.DNS = deadDNS(t)
		_, err := other.Fetch(ctx, labDomain)
		require.Error(t, err)
		assert.True(t, IsTemporary(err), "%v", err)
	})
	t.Run("a server that does not answer in time is temporary", func(t *testing.T) {
		// A listener that accepts and never speaks: the TLS handshake
		// waits until the fetch's timeout.
		other := *f
		other.Timeout = 300 * time.Millisecond
		other.Port = silentListener(t, policyIP)
		start := time.Now()
		_, err := other.Fetch(ctx, labDomain)
		require.Error(t, err)
		assert.Less(t, time.Since(start), 3*time.Second)
		assert.True(t, IsTemporary(err), "%v", err)
	})
	t.Run("an invalid domain is refused before any lookup", func(t *testing.T) {
		_, err := f.Fetch(ctx, "../etc")
		require.ErrorIs(t, err, ErrDomain)
	})
}
