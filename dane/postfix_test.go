package dane

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// dialDANE opens an SMTP session to addr with STARTTLS required and the
// server authenticated by v, the way delivery is to plug DANE into the
// transport: the TLSA base domain as ServerName (and SNI), the Web PKI
// check off, the verifier's hook on.
func dialDANE(t *testing.T, addr, baseDomain string, v *Verifier) (*transport.Client, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	return transport.Dial(t.Context(), conn, transport.Options{
		Hostname:          "client.example.org",
		ServerName:        baseDomain,
		StartTLS:          transport.TLSRequire,
		AllowInvalidCerts: true,
		TLSConfig:         v.TLSConfig(nil, baseDomain),
	})
}

// TestPostfix authenticates a real Postfix, over STARTTLS, through the
// project's SMTP client.
func TestPostfix(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{})
	leaf, ca := pf.Leaf, pf.CA.Cert
	ee := record(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.DER, leaf.SPKI)
	ta := recordFor(UsageDANETA, SelectorCert, MatchingSHA256, ca)

	tests := []struct {
		name       string
		records    []resolver.TLSA
		baseDomain string
		names      []string
		want       error
	}{
		{"3 1 1, for a name the certificate does not carry", []resolver.TLSA{ee}, "mx.dane.test", nil, nil},
		{"3 0 2", []resolver.TLSA{record(UsageDANEEE, SelectorCert, MatchingSHA512, leaf.DER, leaf.SPKI)}, "mx.dane.test", nil, nil},
		{"3 1 1, wrong digest", []resolver.TLSA{corrupt(ee)}, "mx.dane.test", nil, ErrNoMatch},
		{"2 0 1 of the CA, the server's name", []resolver.TLSA{ta}, pf.Hostname, nil, nil},
		{"2 0 1 of the CA, the MX name beside a CNAME target", []resolver.TLSA{ta}, "mx.cname-target.test", []string{pf.Hostname}, nil},
		{"2 1 1 of the CA, the server's name", []resolver.TLSA{recordFor(UsageDANETA, SelectorSPKI, MatchingSHA256, ca)}, pf.Hostname, nil, nil},
		{"2 0 1 of the CA, a name not in the certificate", []resolver.TLSA{ta}, "mx.dane.test", nil, ErrNameMismatch},
		{"2 0 1 of the server's own certificate: its own anchor", []resolver.TLSA{record(UsageDANETA, SelectorCert, MatchingSHA256, leaf.DER, leaf.SPKI)}, pf.Hostname, nil, nil},
		{"2 0 1 of the server's own certificate, the names still count", []resolver.TLSA{record(UsageDANETA, SelectorCert, MatchingSHA256, leaf.DER, leaf.SPKI)}, "mx.dane.test", nil, ErrNameMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mustVerifier(t, tt.records, append([]string{tt.baseDomain}, tt.names...)...)
			c, err := dialDANE(t, pf.SMTPAddr, tt.baseDomain, v)
			if tt.want == nil {
				require.NoError(t, err)
				require.NotNil(t, c.TLS(), "STARTTLS done")
				assert.Equal(t, tt.baseDomain, c.TLS().ServerName)
				assert.Equal(t, leaf.DER, c.TLS().PeerCertificates[0].Raw)
				require.NoError(t, c.Quit())
				return
			}
			require.Error(t, err)
			require.ErrorIs(t, err, tt.want)
			var de *Error
			require.ErrorAs(t, err, &de, "the DANE error comes through crypto/tls and the transport")
			var te *transport.Error
			require.ErrorAs(t, err, &te)
			assert.Equal(t, transport.PhaseTLS, te.Phase)
			assert.False(t, transport.IsPermanent(err), "a DANE failure is temporary")
		})
	}
}
