package dkim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// sigSelectors returns the selectors of a Signing's signatures.
func sigSelectors(g *Signing) []string {
	var out []string
	for _, sig := range g.Signatures() {
		out = append(out, sig.Selector)
	}
	return out
}

// selectors returns the selectors of the signatures a Signer makes now for
// a message from example.test, and the Signing.
func selectors(t *testing.T, s *Signer) ([]string, *Signing) {
	t.Helper()
	_, g := sign(t, s, Envelope{}, testMessage("alice@example.test", "Hello\r\n"), 0)
	return sigSelectors(g), g
}

// eventually waits, at most 30 s, until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stays checks that cond holds for d.
func stays(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		require.True(t, cond(), what)
	}
}

func readState(t *testing.T, dir, domain string) *rotationState {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "smtp", "dkim", domain, "_rotation.json"))
	require.NoError(t, err)
	var st rotationState
	require.NoError(t, json.Unmarshal(data, &st))
	return &st
}

// checkPublished checks a signed message: each signature verifies
// against the record Knot serves now (the key that signed is the one
// published), that record's key is the one in storage, and the verifiers
// agree, asking unbound.
func checkPublished(t *testing.T, l *lab, dir string, signed []byte, g *Signing) {
	t.Helper()
	require.NoError(t, g.Err())
	vs := l.knotVerify(t, signed)
	require.Len(t, vs, len(g.Signatures()))
	for _, v := range vs {
		assert.NoError(t, v.Err, "go-msgauth, keys from Knot: %s", v.Domain)
	}
	stored := NewKeys(&certmagic.FileStorage{Path: dir}, nil)
	for _, sig := range g.Signatures() {
		k, err := stored.Load(t.Context(), sig.Domain, sig.Selector)
		require.NoError(t, err)
		m := peertest.Query(t, l.knot.Addr, strings.TrimSuffix(k.Name(), "."), dns.TypeTXT, false)
		require.Len(t, m.Answer, 1, "%s in Knot", k.Name())
		pub, _ := recordKey(strings.Join(m.Answer[0].(*dns.TXT).Txt, ""))
		assert.Equal(t, k.PublicKey(), pub, "%s: Knot's record holds the key in storage", k.Name())
	}
	for _, r := range l.pythonVerify(t, writeMessage(t, signed)) {
		assert.True(t, r.OK, "python3-dkim: %+v", r)
	}
	assert.NoError(t, l.opendkimVerify(t, writeMessage(t, signed)))
}

// TestPublishAndRotate: two instances on one storage folder, whose signers
// publish through a DNS provider (RFC 2136 updates into Knot, the zone
// found by its SOA through unbound):
//   - no key signs while its record is not set (the provider holds its
//     updates); once set and resolving, both instances sign with it and the
//     verifiers find it;
//   - a rotation keeps signing with the old keys while the new records are
//     not out, then both instances switch to the new selectors, which
//     verify;
//   - a week later (RetireAfter, seconds here) the old records are removed.
func TestPublishAndRotate(t *testing.T) {
	l := startLab(t, "", true)
	p := &rfc2136{server: l.knot.Addr}
	p.hold()
	dir := t.TempDir()
	// A TTL of a second, not 0: while the records are held, the signers'
	// checks leave an NXDOMAIN for each name in unbound's cache, which
	// the verifiers ask too. unbound does not cache an answer of TTL 0
	// (nor drop the NXDOMAIN for it), so once a signer had seen the record
	// and switched to its key, the verifiers were still told, for up to
	// two seconds, that the record did not exist.
	ttl := caddy.Duration(time.Second)
	cfgs := []Config{
		{Domain: "example.test", Publish: &PublishConfig{Provider: p, TTL: ttl}},
		{Domain: "example.test", Algorithm: Ed25519SHA256, Publish: &PublishConfig{Provider: p, TTL: ttl}},
	}
	opts := Options{Resolver: l.resolver, Nameservers: []string{"udp://" + l.unbound.Addr},
		CheckInterval: 100 * time.Millisecond, RetireAfter: 8 * time.Second, Logger: testLogger(t)}
	var instances []*Signer
	for range 2 {
		s, err := NewSigner(cfgs, NewKeys(&certmagic.FileStorage{Path: dir}, opts.Logger), opts)
		require.NoError(t, err)
		require.NoError(t, s.Start(t.Context()))
		t.Cleanup(s.Stop)
		instances = append(instances, s)
	}

	// Nothing signs before the records are out.
	stays(t, "a key whose record is not set must not sign", time.Second, func() bool {
		for _, s := range instances {
			sels, g := selectors(t, s)
			if len(sels) != 0 || !strings.Contains(g.Err().Error(), "s1._domainkey.example.test not used: its record does not resolve yet") {
				return false
			}
		}
		return true
	})
	p.release()
	for i, s := range instances {
		eventually(t, "instance signs once its records resolve", func() bool {
			sels, _ := selectors(t, s)
			return strings.Join(sels, ",") == "s1,e1"
		})
		signed, g := sign(t, s, Envelope{}, testMessage("alice@example.test", "Hello\r\n"), 0)
		require.NoError(t, g.Err(), "instance %d", i)
		checkPublished(t, l, dir, signed, g)
	}
	// Both instances may set a record (each saw it missing before its
	// update was let through): the same record, as SetRecords replaces
	// the RRset. Knot has one record at each name.
	for _, name := range p.setNames() {
		assert.Contains(t, []string{"s1._domainkey.example.test.", "e1._domainkey.example.test."}, name)
		assert.Len(t, peertest.Query(t, l.knot.Addr, name, dns.TypeTXT, false).Answer, 1, name)
	}

	// Rotation, its records held back: Rotate returns the new records
	// (their publication is retried in the background).
	p.hold()
	recs, err := instances[0].Rotate(t.Context(), "example.test")
	require.NoError(t, err)
	day := time.Now().UTC().Format("20060102")
	require.Len(t, recs, 2)
	assert.Equal(t, "s1-"+day, recs[0].Selector)
	assert.Equal(t, RoleNext, recs[0].Role)
	assert.Equal(t, "e1-"+day, recs[1].Selector)
	st := readState(t, dir, "example.test")
	assert.Equal(t, "s1-"+day, st.Signers["s1"].Next)
	assert.Equal(t, "e1-"+day, st.Signers["e1"].Next)
	stays(t, "the old keys sign until the new records resolve", 2*time.Second, func() bool {
		for _, s := range instances {
			if sels, _ := selectors(t, s); strings.Join(sels, ",") != "s1,e1" {
				return false
			}
		}
		return true
	})
	p.release()
	for i, s := range instances {
		eventually(t, "both instances switch to the new keys", func() bool {
			sels, _ := selectors(t, s)
			return strings.Join(sels, ",") == "s1-"+day+",e1-"+day
		})
		if i == 0 {
			st := readState(t, dir, "example.test")
			require.Len(t, st.Signers["s1"].Retired, 1)
			assert.Equal(t, "s1", st.Signers["s1"].Retired[0].Selector)
			assert.WithinDuration(t, time.Now().Add(opts.RetireAfter), st.Signers["s1"].Retired[0].Until, 5*time.Second)
			assert.Equal(t, "s1-"+day, st.Signers["s1"].Current)
			assert.Empty(t, st.Signers["s1"].Next)
			assert.Equal(t, dns.RcodeSuccess, peertest.Query(t, l.knot.Addr, "s1._domainkey.example.test", dns.TypeTXT, false).Rcode)
		}
		signed, g := sign(t, s, Envelope{}, testMessage("alice@example.test", "Hello\r\n"), 0)
		require.Equal(t, []string{"s1-" + day, "e1-" + day}, sigSelectors(g), "instance %d", i)
		checkPublished(t, l, dir, signed, g)
	}

	// The old records stay until RetireAfter, then go.
	eventually(t, "the retired records are removed", func() bool {
		return peertest.Query(t, l.knot.Addr, "s1._domainkey.example.test", dns.TypeTXT, false).Rcode == dns.RcodeNameError &&
			peertest.Query(t, l.knot.Addr, "e1._domainkey.example.test", dns.TypeTXT, false).Rcode == dns.RcodeNameError
	})
	eventually(t, "the state forgets them", func() bool {
		st := readState(t, dir, "example.test")
		return len(st.Signers["s1"].Retired) == 0 && len(st.Signers["e1"].Retired) == 0
	})
	assert.Equal(t, dns.RcodeSuccess, peertest.Query(t, l.knot.Addr, "s1-"+day+"._domainkey.example.test", dns.TypeTXT, false).Rcode)
}

// TestRotateByHand: a signer without a DNS provider keeps signing with the
// old key after a rotation until the new record, published by hand (here
// a reload of Knot's zone), resolves; Records lists both meanwhile.
func TestRotateByHand(t *testing.T) {
	dir := t.TempDir()
	opts := Options{CheckInterval: 100 * time.Millisecond, Logger: testLogger(t)}
	s, err := NewSigner([]Config{{Domain: "example.test"}}, NewKeys(&certmagic.FileStorage{Path: dir}, opts.Logger), opts)
	require.NoError(t, err)
	recs, err := s.Records(t.Context(), "example.test")
	require.NoError(t, err)
	require.Len(t, recs, 1)
	l := startLab(t, zoneRecords(recs), true)
	s.opts.Resolver = l.resolver
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	sels, _ := selectors(t, s)
	require.Equal(t, []string{"s1"}, sels)

	next, err := s.Rotate(context.Background(), "example.test")
	require.NoError(t, err)
	require.Len(t, next, 1)
	again, err := s.Rotate(context.Background(), "example.test")
	require.NoError(t, err)
	assert.Equal(t, next, again, "a rotation under way is not restarted")
	all, err := s.Records(t.Context(), "example.test")
	require.NoError(t, err)
	require.Len(t, all, 2)
	assert.Equal(t, RoleCurrent, all[0].Role)
	assert.Equal(t, RoleNext, all[1].Role)

	stays(t, "the old key signs until the new record resolves", 2*time.Second, func() bool {
		sels, _ := selectors(t, s)
		return strings.Join(sels, ",") == "s1"
	})
	l.knot.Reload(t, labZone, zoneRecords(all))
	eventually(t, "switch to the new key", func() bool {
		sels, _ := selectors(t, s)
		return strings.Join(sels, ",") == next[0].Selector
	})
	signed, _ := sign(t, s, Envelope{}, testMessage("alice@example.test", "Hello\r\n"), 0)
	res := l.pythonVerify(t, writeMessage(t, signed))
	require.Len(t, res, 1)
	assert.True(t, res[0].OK, "%+v", res[0])
	assert.Equal(t, next[0].Selector, res[0].S)

	// Records now: the new key current, the old one retired.
	all, err = s.Records(t.Context(), "example.test")
	require.NoError(t, err)
	require.Len(t, all, 2)
	assert.Equal(t, next[0].Selector, all[0].Selector)
	assert.Equal(t, RoleCurrent, all[0].Role)
	assert.Equal(t, "s1", all[1].Selector)
	assert.Equal(t, RoleRetired, all[1].Role)
}
