package caddysmtp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// daneLab is the DANE world of TestDeliverDANE and
// TestDANEAgreesWithPostfix: a Postfix MX on port 25 of its own loopback
// address, and the zones that name it: dane.test, signed by Knot, with
// good (3 1 1 of its key), bad (a wrong digest), ta (2 0 1 of its CA) and
// pkix (an unusable PKIX-EE record); unsigned.test, with a TLSA record that
// must be ignored; and bogus.test, whose signatures expired (NSD).
type daneLab struct {
	mx    *peertest.Postfix
	knot  *peertest.Knot
	bogus *peertest.BogusZone
}

// daneDomains are the domains the lab's MX takes mail for.
var daneDomains = []string{"good.dane.test", "bad.dane.test", "ta.dane.test", "pkix.dane.test", "unsigned.test"}

func startDANELab(t *testing.T, ip string) *daneLab {
	t.Helper()
	ca := peertest.NewCA(t, "dane test CA")
	mx := peertest.StartPostfix(t, peertest.PostfixOptions{CA: ca, Addr: ip, Port: 25, Hostname: "mx.ta.dane.test", Mailbox: true,
		Domains: daneDomains})
	spki := sha256.Sum256(mx.Leaf.SPKI)
	caDigest := sha256.Sum256(ca.Cert.Raw)
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{
		{Name: "dane.test", Signed: true, Records: fmt.Sprintf(`
good MX 10 mx.good
mx.good A %[1]s
_25._tcp.mx.good TLSA 3 1 1 %[2]s
bad MX 10 mx.bad
mx.bad A %[1]s
_25._tcp.mx.bad TLSA 3 1 1 %[3]s
ta MX 10 mx.ta
mx.ta A %[1]s
_25._tcp.mx.ta TLSA 2 0 1 %[4]s
pkix MX 10 mx.pkix
mx.pkix A %[1]s
_25._tcp.mx.pkix TLSA 1 1 1 %[5]s
`, ip, hex.EncodeToString(spki[:]), strings.Repeat("ab", 32), hex.EncodeToString(caDigest[:]), strings.Repeat("ef", 32))},
		{Name: "unsigned.test", Records: fmt.Sprintf("@ MX 10 mx\nmx A %s\n_25._tcp.mx TLSA 3 1 1 %s\n", ip, strings.Repeat("cd", 32))},
	}})
	bogus := peertest.StartBogusZone(t, "bogus.test", "@ MX 10 mx\nmx A "+ip+"\n")
	return &daneLab{mx: mx, knot: knot, bogus: bogus}
}
