package dane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// record makes the TLSA record of usage for cert, computing the
// association data from the DER certificate or SPKI with the matching
// type's digest.
func record(usage, selector, matching uint8, der, spki []byte) resolver.TLSA {
	data := der
	if selector == SelectorSPKI {
		data = spki
	}
	switch matching {
	case MatchingSHA256:
		sum := sha256.Sum256(data)
		data = sum[:]
	case MatchingSHA512:
		sum := sha512.Sum512(data)
		data = sum[:]
	}
	return resolver.TLSA{Usage: usage, Selector: selector, MatchingType: matching, Data: append([]byte(nil), data...)}
}

// recordFor is record for a parsed certificate.
func recordFor(usage, selector, matching uint8, cert *x509.Certificate) resolver.TLSA {
	return record(usage, selector, matching, cert.Raw, cert.RawSubjectPublicKeyInfo)
}

// corrupt returns r with the last byte of its data flipped.
func corrupt(r resolver.TLSA) resolver.TLSA {
	r.Data = append([]byte(nil), r.Data...)
	r.Data[len(r.Data)-1] ^= 0xff
	return r
}

// certSpec describes a certificate made by makeCert.
type certSpec struct {
	// names are DNS SANs; cn is the subject's common name.
	names []string
	cn    string
	// notBefore and notAfter default to an hour ago and a day from now.
	notBefore, notAfter time.Time
	// ca makes an intermediate CA.
	ca bool
	// parent and parentKey sign the certificate; nil parent: self-signed.
	parent    *x509.Certificate
	parentKey crypto.Signer
}

// issued is a certificate made by makeCert, with its key.
type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// makeCert makes the certificates that peertest's CA does not: expired,
// not yet valid, with other names, intermediate CAs, self-signed leaves.
func makeCert(t *testing.T, s certSpec) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	if s.notBefore.IsZero() {
		s.notBefore = time.Now().Add(-time.Hour)
	}
	if s.notAfter.IsZero() {
		s.notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      pkix.Name{CommonName: s.cn, Organization: []string{"dane test"}},
		DNSNames:     s.names,
		NotBefore:    s.notBefore,
		NotAfter:     s.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if s.ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = nil
	}
	parent, parentKey := s.parent, s.parentKey
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return issued{cert: cert, key: key}
}

// byCA makes a certificate signed by the peertest CA.
func byCA(t *testing.T, ca *peertest.CA, s certSpec) issued {
	t.Helper()
	s.parent, s.parentKey = ca.Cert, ca.Key
	return makeCert(t, s)
}

// mustVerifier is NewVerifier that fails the test on error.
func mustVerifier(t *testing.T, records []resolver.TLSA, names ...string) *Verifier {
	t.Helper()
	v, err := NewVerifier(records, names...)
	require.NoError(t, err)
	return v
}
