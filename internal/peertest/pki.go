package peertest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// CA is a throwaway ECDSA P-256 root certificate authority for tests. Its
// files live in a directory of their own that every user can read, so that
// daemons running as postfix, dovecot or nobody can read them too.
type CA struct {
	// Name is the CA's common name.
	Name string
	// Cert is the parsed root certificate.
	Cert *x509.Certificate
	// Key is the root's private key.
	Key *ecdsa.PrivateKey
	// CertPEM is the root certificate in PEM form.
	CertPEM []byte
	// CertFile is the path of a file holding CertPEM, for clients such as
	// swaks --tls-ca-path or openssl -CAfile.
	CertFile string
	// Dir is the directory that holds the CA's and its leaves' files.
	Dir string

	mu sync.Mutex
	n  int
}

// Leaf is a certificate issued by a CA, with its key, in memory and on disk.
type Leaf struct {
	// Cert is the certificate chain (leaf, then CA) with its private key,
	// ready for tls.Config.Certificates.
	Cert tls.Certificate
	// X509 is the parsed leaf certificate.
	X509 *x509.Certificate
	// DER is the leaf certificate in DER form (for DANE "3 0 x" records).
	DER []byte
	// SPKI is the leaf's DER SubjectPublicKeyInfo (for DANE "3 1 x" records).
	SPKI []byte
	// CertPEM is the leaf certificate alone, in PEM form.
	CertPEM []byte
	// KeyPEM is the leaf's private key in PKCS#8 PEM form.
	KeyPEM []byte
	// CertFile is the path of the leaf certificate alone.
	CertFile string
	// KeyFile is the path of the private key. It is world-readable (0644):
	// these are test keys, and daemons that read keys after dropping
	// privileges must be able to.
	KeyFile string
	// ChainFile is the path of the leaf followed by the CA certificate.
	ChainFile string
}

// NewCA makes a new root CA valid from an hour ago for two days. Its files
// are removed when the test ends.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"peertest"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	dir := instanceDir(t, "ca")
	ca := &CA{
		Name:    name,
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Dir:     dir,
	}
	ca.CertFile = filepath.Join(dir, "ca.pem")
	writeFile(t, ca.CertFile, ca.CertPEM)
	return ca
}

// Pool returns a new certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue makes a server-and-client certificate for the given hosts, each a
// DNS name or an IP address (IPs go into the IP address SAN). The first
// host is also the subject's common name. The leaf is valid from an hour
// ago for one day.
func (ca *CA) Issue(t testing.TB, hosts ...string) *Leaf {
	t.Helper()
	if len(hosts) == 0 {
		t.Fatalf("peertest: Issue needs at least one host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(t),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"peertest"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	l := &Leaf{
		Cert: tls.Certificate{
			Certificate: [][]byte{der, ca.Cert.Raw},
			PrivateKey:  key,
			Leaf:        cert,
		},
		X509:    cert,
		DER:     der,
		SPKI:    cert.RawSubjectPublicKeyInfo,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}
	ca.mu.Lock()
	ca.n++
	base := filepath.Join(ca.Dir, fmt.Sprintf("leaf%d", ca.n))
	ca.mu.Unlock()
	l.CertFile = base + "-cert.pem"
	l.KeyFile = base + "-key.pem"
	l.ChainFile = base + "-chain.pem"
	writeFile(t, l.CertFile, l.CertPEM)
	writeFile(t, l.KeyFile, l.KeyPEM)
	writeFile(t, l.ChainFile, append(append([]byte{}, l.CertPEM...), ca.CertPEM...))
	return l
}

// randSerial returns a random positive 128-bit serial number.
func randSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}
