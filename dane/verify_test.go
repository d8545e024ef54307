package dane

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
)

func TestVerify(t *testing.T) {
	ca := peertest.NewCA(t, "dane verify CA")
	otherCA := peertest.NewCA(t, "dane other CA")
	leaf := ca.Issue(t, "mx.example.test")
	now := time.Now()
	expired := byCA(t, ca, certSpec{names: []string{"mx.example.test"}, notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-24 * time.Hour)})
	future := byCA(t, ca, certSpec{names: []string{"mx.example.test"}, notBefore: now.Add(24 * time.Hour), notAfter: now.Add(48 * time.Hour)})
	wrongName := byCA(t, ca, certSpec{names: []string{"www.elsewhere.test"}})
	cnOnly := byCA(t, ca, certSpec{cn: "mx.example.test"})
	wildcard := byCA(t, ca, certSpec{names: []string{"*.example.test"}})
	selfSigned := makeCert(t, certSpec{names: []string{"mx.example.test"}})
	// root allows an intermediate, which peertest's CA does not (its
	// path length is zero).
	root := makeCert(t, certSpec{cn: "dane root", ca: true})
	intermediate := makeCert(t, certSpec{cn: "dane intermediate", ca: true, parent: root.cert, parentKey: root.key})
	viaIntermediate := makeCert(t, certSpec{names: []string{"mx.example.test"}, parent: intermediate.cert, parentKey: intermediate.key})
	underPathLenZero := byCA(t, ca, certSpec{cn: "dane intermediate under a path length of zero", ca: true})
	viaPathLenZero := makeCert(t, certSpec{names: []string{"mx.example.test"}, parent: underPathLenZero.cert, parentKey: underPathLenZero.key})
	// forged carries the TA's certificate in its chain but is signed by
	// another CA: the anchor matches, the chain does not verify.
	forged := byCA(t, otherCA, certSpec{names: []string{"mx.example.test"}})

	eeSPKI := recordFor(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.X509)
	taCert := recordFor(UsageDANETA, SelectorCert, MatchingSHA256, ca.Cert)
	taSPKI := recordFor(UsageDANETA, SelectorSPKI, MatchingSHA512, ca.Cert)
	names := []string{"mx.example.test"}

	tests := []struct {
		name    string
		records []resolver.TLSA
		names   []string
		chain   []*x509.Certificate
		want    error // nil: authenticated
	}{
		// DANE-EE(3): the key or certificate, nothing else.
		{"EE: the leaf's SPKI", []resolver.TLSA{eeSPKI}, names, []*x509.Certificate{leaf.X509, ca.Cert}, nil},
		{"EE: the leaf's certificate", []resolver.TLSA{recordFor(UsageDANEEE, SelectorCert, MatchingSHA512, leaf.X509)}, names, []*x509.Certificate{leaf.X509}, nil},
		{"EE: an expired certificate passes", []resolver.TLSA{recordFor(UsageDANEEE, SelectorSPKI, MatchingSHA256, expired.cert)}, names, []*x509.Certificate{expired.cert}, nil},
		{"EE: a not yet valid certificate passes", []resolver.TLSA{recordFor(UsageDANEEE, SelectorCert, MatchingSHA256, future.cert)}, names, []*x509.Certificate{future.cert}, nil},
		{"EE: a certificate for another name passes", []resolver.TLSA{recordFor(UsageDANEEE, SelectorSPKI, MatchingSHA256, wrongName.cert)}, names, []*x509.Certificate{wrongName.cert}, nil},
		{"EE: with no names at all", []resolver.TLSA{eeSPKI}, nil, []*x509.Certificate{leaf.X509}, nil},
		{"EE: a self-signed certificate passes", []resolver.TLSA{recordFor(UsageDANEEE, SelectorSPKI, MatchingFull, selfSigned.cert)}, names, []*x509.Certificate{selfSigned.cert}, nil},
		{"EE: a wrong digest fails", []resolver.TLSA{corrupt(eeSPKI)}, names, []*x509.Certificate{leaf.X509, ca.Cert}, ErrNoMatch},
		{"EE: only the leaf counts, not the CA", []resolver.TLSA{recordFor(UsageDANEEE, SelectorCert, MatchingSHA256, ca.Cert)}, names, []*x509.Certificate{leaf.X509, ca.Cert}, ErrNoMatch},
		{"EE: one of several records", []resolver.TLSA{corrupt(eeSPKI), eeSPKI}, names, []*x509.Certificate{leaf.X509}, nil},

		// DANE-TA(2): the chain to the anchor, the validity dates, the names.
		{"TA: 2 0 1 of the CA, right name", []resolver.TLSA{taCert}, names, []*x509.Certificate{leaf.X509, ca.Cert}, nil},
		{"TA: 2 1 2 of the CA, right name", []resolver.TLSA{taSPKI}, names, []*x509.Certificate{leaf.X509, ca.Cert}, nil},
		{"TA: the MX host name among others", []resolver.TLSA{taCert}, []string{"mx.cname-target.test", "MX.Example.Test."}, []*x509.Certificate{leaf.X509, ca.Cert}, nil},
		{"TA: a wildcard certificate", []resolver.TLSA{taCert}, names, []*x509.Certificate{wildcard.cert, ca.Cert}, nil},
		{"TA: a CN-only certificate", []resolver.TLSA{taCert}, names, []*x509.Certificate{cnOnly.cert, ca.Cert}, nil},
		{"TA: an intermediate as the anchor", []resolver.TLSA{recordFor(UsageDANETA, SelectorSPKI, MatchingSHA256, intermediate.cert)}, names, []*x509.Certificate{viaIntermediate.cert, intermediate.cert, root.cert}, nil},
		{"TA: the root through an intermediate", []resolver.TLSA{recordFor(UsageDANETA, SelectorCert, MatchingSHA256, root.cert)}, names, []*x509.Certificate{viaIntermediate.cert, intermediate.cert, root.cert}, nil},
		{"TA: the anchor's path length constraint holds", []resolver.TLSA{taCert}, names, []*x509.Certificate{viaPathLenZero.cert, underPathLenZero.cert, ca.Cert}, ErrChain},
		{"TA: a self-signed leaf as its own anchor", []resolver.TLSA{recordFor(UsageDANETA, SelectorCert, MatchingSHA256, selfSigned.cert)}, names, []*x509.Certificate{selfSigned.cert}, nil},
		{"TA: a wrong name fails", []resolver.TLSA{taCert}, []string{"mx.other.test"}, []*x509.Certificate{leaf.X509, ca.Cert}, ErrNameMismatch},
		{"TA: a certificate for another name fails", []resolver.TLSA{taCert}, names, []*x509.Certificate{wrongName.cert, ca.Cert}, ErrNameMismatch},
		{"TA: no names fails", []resolver.TLSA{taCert}, nil, []*x509.Certificate{leaf.X509, ca.Cert}, ErrNameMismatch},
		{"TA: a wildcard is one label only", []resolver.TLSA{taCert}, []string{"a.mx.example.test"}, []*x509.Certificate{wildcard.cert, ca.Cert}, ErrNameMismatch},
		{"TA: an expired certificate fails", []resolver.TLSA{taCert}, names, []*x509.Certificate{expired.cert, ca.Cert}, ErrChain},
		{"TA: a not yet valid certificate fails", []resolver.TLSA{taCert}, names, []*x509.Certificate{future.cert, ca.Cert}, ErrChain},
		{"TA: a certificate of another CA fails", []resolver.TLSA{taCert}, names, []*x509.Certificate{forged.cert, ca.Cert}, ErrChain},
		{"TA: a missing intermediate fails", []resolver.TLSA{recordFor(UsageDANETA, SelectorCert, MatchingSHA256, root.cert)}, names, []*x509.Certificate{viaIntermediate.cert, root.cert}, ErrChain},
		{"TA: the anchor must be sent", []resolver.TLSA{taCert}, names, []*x509.Certificate{leaf.X509}, ErrNoMatch},
		{"TA: a wrong digest fails", []resolver.TLSA{corrupt(taCert)}, names, []*x509.Certificate{leaf.X509, ca.Cert}, ErrNoMatch},
		{"TA: the record of another CA fails", []resolver.TLSA{recordFor(UsageDANETA, SelectorCert, MatchingSHA256, otherCA.Cert)}, names, []*x509.Certificate{leaf.X509, ca.Cert}, ErrNoMatch},

		// Both kinds, and no certificate.
		{"a wrong EE record beside a right TA record", []resolver.TLSA{corrupt(eeSPKI), taCert}, names, []*x509.Certificate{leaf.X509, ca.Cert}, nil},
		{"a right EE record beside a TA record the name fails", []resolver.TLSA{taCert, eeSPKI}, []string{"mx.other.test"}, []*x509.Certificate{leaf.X509, ca.Cert}, nil},
		{"no certificate", []resolver.TLSA{eeSPKI}, names, nil, ErrNoCertificate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mustVerifier(t, tt.records, tt.names...).Verify(tt.chain)
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.want)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.True(t, e.Temporary(), "a DANE failure defers the message")
			assert.Contains(t, err.Error(), "dane: ")
		})
	}
}

func TestVerifyErrors(t *testing.T) {
	ca := peertest.NewCA(t, "dane errors CA")
	leaf := byCA(t, ca, certSpec{names: []string{"mx.example.test"}, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	ta := recordFor(UsageDANETA, SelectorCert, MatchingSHA256, ca.Cert)

	t.Run("a chain error carries the x509 error", func(t *testing.T) {
		err := mustVerifier(t, []resolver.TLSA{ta}, "mx.example.test").Verify([]*x509.Certificate{leaf.cert, ca.Cert})
		var invalid x509.CertificateInvalidError
		require.ErrorAs(t, err, &invalid)
		assert.Equal(t, x509.Expired, invalid.Reason)
		assert.ErrorIs(t, err, ErrChain)
	})
	t.Run("a name mismatch lists the names", func(t *testing.T) {
		good := ca.Issue(t, "mx.example.test")
		err := mustVerifier(t, []resolver.TLSA{ta}, "MX.Other.Test.", "mx.other.test", "mx2.other.test").Verify([]*x509.Certificate{good.X509, ca.Cert})
		assert.EqualError(t, err, "dane: the server's certificate matches none of the names (mx.other.test, mx2.other.test)")
	})
	t.Run("no usable record", func(t *testing.T) {
		pkixEE := recordFor(UsagePKIXEE, SelectorSPKI, MatchingSHA256, leaf.cert)
		v, err := NewVerifier([]resolver.TLSA{pkixEE}, "mx.example.test")
		assert.Nil(t, v)
		require.ErrorIs(t, err, ErrNoUsableRecords)
		assert.EqualError(t, err, "dane: no usable TLSA record")
		_, err = NewVerifier(nil)
		assert.ErrorIs(t, err, ErrNoUsableRecords)
	})
	t.Run("Is tells the reasons apart", func(t *testing.T) {
		err := error(&Error{Reason: ErrNoMatch})
		assert.ErrorIs(t, err, ErrNoMatch)
		assert.NotErrorIs(t, err, ErrChain)
		assert.NotErrorIs(t, err, ErrNameMismatch)
	})
}

func TestTLSConfig(t *testing.T) {
	ca := peertest.NewCA(t, "dane config CA")
	leaf := ca.Issue(t, "mx.example.test")
	v := mustVerifier(t, []resolver.TLSA{recordFor(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.X509)})

	base := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "ignored.test", VerifyConnection: func(tls.ConnectionState) error { return errors.New("base") }}
	cfg := v.TLSConfig(base, "MX.Example.Test.")
	assert.Equal(t, "mx.example.test", cfg.ServerName, "the SNI is the TLSA base domain")
	assert.True(t, cfg.InsecureSkipVerify)
	assert.Equal(t, uint16(tls.VersionTLS13), cfg.MinVersion, "the rest of base is kept")
	require.NotNil(t, cfg.VerifyConnection)
	assert.NoError(t, cfg.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf.X509}}), "the verifier's hook replaces base's")
	assert.Equal(t, "ignored.test", base.ServerName, "base is not changed")
	assert.False(t, base.InsecureSkipVerify)

	assert.NotNil(t, v.TLSConfig(nil, "mx.example.test").VerifyConnection)
}

// TestHandshake runs the hook in real TLS handshakes with a crypto/tls
// server on loopback, and checks which name the server sees.
func TestHandshake(t *testing.T) {
	ca := peertest.NewCA(t, "dane handshake CA")
	leaf := ca.Issue(t, "mx.example.test")
	sni := make(chan string, 1)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{leaf.Cert},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			sni <- hello.ServerName
			return nil, nil
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_ = c.(*tls.Conn).Handshake()
			}()
		}
	}()

	tests := []struct {
		name    string
		records []resolver.TLSA
		names   []string
		want    error
	}{
		{"3 1 1", []resolver.TLSA{recordFor(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.X509)}, []string{"mx.dane.test"}, nil},
		{"3 1 1, wrong digest", []resolver.TLSA{corrupt(recordFor(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.X509))}, []string{"mx.dane.test"}, ErrNoMatch},
		{"2 0 1, right name", []resolver.TLSA{recordFor(UsageDANETA, SelectorCert, MatchingSHA256, ca.Cert)}, []string{"mx.example.test"}, nil},
		{"2 0 1, wrong name", []resolver.TLSA{recordFor(UsageDANETA, SelectorCert, MatchingSHA256, ca.Cert)}, []string{"mx.dane.test"}, ErrNameMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mustVerifier(t, tt.records, tt.names...)
			conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			require.NoError(t, err)
			defer func() { _ = conn.Close() }()
			require.NoError(t, conn.SetDeadline(time.Now().Add(5*time.Second)))
			tc := tls.Client(conn, v.TLSConfig(nil, tt.names[0]))
			err = tc.HandshakeContext(t.Context())
			select {
			case name := <-sni:
				assert.Equal(t, tt.names[0], name, "SNI is the TLSA base domain")
			case <-time.After(5 * time.Second):
				t.Fatal("the server saw no ClientHello")
			}
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.want)
			var e *Error
			assert.ErrorAs(t, err, &e)
		})
	}
}
