package dane

import (
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// TestFromDNSToHandshake runs DANE end to end: TLSA records for a real
// Postfix, published in zones Knot signs, looked up through unbound
// validating them, then used to authenticate that Postfix over STARTTLS.
func TestFromDNSToHandshake(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{})
	ee := record(UsageDANEEE, SelectorSPKI, MatchingSHA256, pf.Leaf.DER, pf.Leaf.SPKI)
	ta := recordFor(UsageDANETA, SelectorCert, MatchingSHA256, pf.CA.Cert)
	tlsa := func(r resolver.TLSA) string {
		return fmt.Sprintf("TLSA %d %d %d %s", r.Usage, r.Selector, r.MatchingType, hex.EncodeToString(r.Data))
	}
	// dane.test pins Postfix's key (DANE-EE) for a name its certificate
	// does not carry; example.test names its CA (DANE-TA) for the name it
	// does carry, which alias.dane.test reaches through a CNAME.
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{
		{Name: "dane.test", Signed: true, Records: fmt.Sprintf(`
mx A 127.0.0.1
_25._tcp.mx %s
bad A 127.0.0.1
_25._tcp.bad %s
alias CNAME mx.example.test.
`, tlsa(ee), tlsa(corrupt(ee)))},
		{Name: "example.test", Signed: true, Records: fmt.Sprintf(`
mx A 127.0.0.1
_25._tcp.mx %s
`, tlsa(ta))},
	}})
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot})
	r, err := resolver.New(resolver.Config{Servers: []string{"udp://" + unbound.Addr}}, "resolver")
	require.NoError(t, err)

	tests := []struct {
		name    string
		mxHost  string
		base    string
		records []resolver.TLSA
		want    error
	}{
		{"DANE-EE", "mx.dane.test", "mx.dane.test", []resolver.TLSA{ee}, nil},
		{"DANE-EE, the wrong key published", "bad.dane.test", "bad.dane.test", []resolver.TLSA{corrupt(ee)}, ErrNoMatch},
		{"DANE-TA through a CNAME", "alias.dane.test", "mx.example.test", []resolver.TLSA{ta}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			// The TLSA base domain is the MX host's name after CNAME
			// expansion, if that expansion is secure (RFC 7672, 2.2.2).
			ip, err := r.LookupA(ctx, tt.mxHost)
			require.NoError(t, err)
			require.Equal(t, resolver.Secure, ip.Security)
			require.NotEmpty(t, ip.Addrs)
			base := ip.Name
			require.Equal(t, tt.base, base)

			res, err := r.LookupTLSA(ctx, 25, base)
			require.NoError(t, err)
			assert.Equal(t, resolver.Secure, res.Security, "validated by unbound")
			assert.Equal(t, tt.records, res.Records)

			v, err := NewVerifier(res.Records, base, tt.mxHost)
			require.NoError(t, err)
			addr := net.JoinHostPort(ip.Addrs[0].String(), strconv.Itoa(pf.SMTPPort))
			c, err := dialDANE(t, addr, base, v)
			if tt.want != nil {
				require.ErrorIs(t, err, tt.want)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, pf.Leaf.DER, c.TLS().PeerCertificates[0].Raw)
			require.NoError(t, c.Quit())
		})
	}
}
