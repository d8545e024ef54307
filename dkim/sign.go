package dkim

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxHeaderBytes bounds the header section held to sign a message.
const DefaultMaxHeaderBytes = 1 << 20

// ErrHeaderTooLarge is why a message whose header section is bigger than
// the bound is not signed.
var ErrHeaderTooLarge = errors.New("header section too large to sign")

// Envelope is what the queue knows of a message besides its content.
type Envelope struct {
	// MailFrom is the envelope sender (the reverse path), "" for the null
	// sender.
	MailFrom string
}

// ChooseFunc returns the domains to sign a message as, given the domain
// of its From header field and its envelope sender; each domain is signed
// with all its signers. The smtp app's dkim_sign rule list is one.
type ChooseFunc func(fromDomain, mailFrom string) []string

// Signature is one signature made.
type Signature struct {
	Domain    string
	Selector  string
	Algorithm Algorithm
}

// signingKey is a key that signs now, with what it signs.
type signingKey struct {
	key     *Key
	headers []string
}

// view is what signs now, by domain; it is replaced whole (copy on
// write) when a key starts or stops signing.
type view struct {
	domains map[string]*domainView
}

type domainView struct {
	keys []*signingKey
	// waiting are keys that do not sign yet (record not published), for
	// the error that says why a message lacks their signature.
	waiting []string
}

// Sign returns a reader of msg that passes its bytes through unchanged
// and signs the message as it goes. Once it has returned io.EOF, Header
// returns the DKIM-Signature fields to put before the message. Only the
// header section is held, up to MaxHeaderBytes; the body is hashed as it
// passes.
//
// Which domains sign is decided once the header section is read: the
// From field's domain, or the domains Options.Choose returns. A message
// without a signer for them passes unsigned (Header is nil, Err nil).
//
// Sign on a nil *Signer returns a reader that only passes the bytes.
func (s *Signer) Sign(env Envelope, msg io.Reader) *Signing {
	g := &Signing{s: s, env: env, r: msg}
	if s == nil {
		g.phase = phaseSkip
	}
	return g
}

// Signing is a message being signed as it is read.
type Signing struct {
	s   *Signer
	env Envelope
	r   io.Reader

	phase  uint8
	end    headerEnd
	header []byte
	keys   []*signingKey
	fields []field
	body   *relaxedBody

	done   bool
	result []byte
	sigs   []Signature
	errs   []error
}

const (
	phaseHeader = iota // reading the header section
	phaseBody          // hashing the body
	phaseSkip          // not signing
)

// Read reads from the message. At io.EOF the signatures are made; any
// other error of the message reader is returned as it is, and nothing is
// signed.
func (g *Signing) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if n > 0 && g.phase != phaseSkip {
		g.take(p[:n])
	}
	if err == io.EOF && !g.done {
		g.done = true
		g.finish()
	}
	return n, err
}

// Header returns the DKIM-Signature fields to prepend to the message,
// folded, each ending in CRLF; nil when nothing was signed or the message
// has not been read to its end.
func (g *Signing) Header() []byte { return g.result }

// Signatures returns the signatures that Header holds.
func (g *Signing) Signatures() []Signature { return g.sigs }

// Err tells why a signature the message should have is missing: a header
// section too large (ErrHeaderTooLarge), no From field, a chosen domain
// without a signer, a key whose record is not published yet, a signing
// failure. The message itself is read and passed on whatever Err says.
func (g *Signing) Err() error { return errors.Join(g.errs...) }

// take processes bytes that passed.
func (g *Signing) take(p []byte) {
	if g.phase == phaseBody {
		g.body.Write(p)
		return
	}
	// phaseHeader
	i := g.end.scan(p)
	head := p
	if i >= 0 {
		head = p[:i]
	}
	if len(g.header)+len(head) > g.s.opts.MaxHeaderBytes {
		g.header = nil
		g.phase = phaseSkip
		g.errs = append(g.errs, fmt.Errorf("%w (more than %d bytes)", ErrHeaderTooLarge, g.s.opts.MaxHeaderBytes))
		return
	}
	g.header = append(g.header, head...)
	if i < 0 {
		return
	}
	g.startBody()
	if g.phase == phaseBody {
		g.body.Write(p[i:])
	}
}

// startBody decides which keys sign once the header section is read.
func (g *Signing) startBody() {
	// The header without the empty line that ends it.
	h := g.header
	if n := len(h); n > 0 && h[n-1] == '\n' {
		h = h[:n-1]
		if n := len(h); n > 0 && h[n-1] == '\r' {
			h = h[:n-1]
		}
	}
	g.fields = parseFields(h)
	g.keys = g.choose()
	if len(g.keys) == 0 {
		g.phase = phaseSkip
		g.header, g.fields = nil, nil
		return
	}
	g.phase = phaseBody
	g.body = getBody()
}

// choose returns the keys that sign the message.
func (g *Signing) choose() []*signingKey {
	from, err := fromDomain(g.fields)
	if err != nil {
		if g.s.opts.Choose != nil || len(g.s.view.Load().domains) > 0 {
			g.errs = append(g.errs, err)
		}
		return nil
	}
	v := g.s.view.Load()
	domains := []string{from}
	chosen := g.s.opts.Choose != nil
	if chosen {
		domains = g.s.opts.Choose(from, g.env.MailFrom)
	}
	var keys []*signingKey
	seen := map[string]bool{}
	for _, d := range domains {
		d, err := normalizeDomain(d)
		if err != nil || seen[d] {
			continue
		}
		seen[d] = true
		dv := v.domains[d]
		if dv == nil {
			if chosen {
				g.errs = append(g.errs, fmt.Errorf("no dkim signer for domain %s", d))
			}
			continue
		}
		for _, w := range dv.waiting {
			g.errs = append(g.errs, fmt.Errorf("dkim key %s not used: its record does not resolve yet", w))
		}
		keys = append(keys, dv.keys...)
	}
	return keys
}

// finish makes the signatures at the end of the message.
func (g *Signing) finish() {
	switch g.phase {
	case phaseSkip:
		return
	case phaseHeader:
		// The message ended inside its header section: it is all header,
		// with an empty body.
		g.startBody()
		if g.phase != phaseBody {
			return
		}
	}
	bh := base64.StdEncoding.EncodeToString(g.body.Sum())
	putBody(g.body)
	now := g.s.opts.Now()
	var out []byte
	for _, k := range g.keys {
		f, err := signField(k, g.fields, bh, now)
		if err != nil {
			g.errs = append(g.errs, err)
			continue
		}
		out = append(out, f...)
		g.sigs = append(g.sigs, Signature{Domain: k.key.Domain, Selector: k.key.Selector, Algorithm: k.key.Algorithm})
	}
	g.result = out
	g.header, g.fields, g.body = nil, nil, nil
}

// headerList returns the h= list for a message: each signed name as many
// times as the message has it, and From once more (oversigning, RFC 6376
// sections 5.4.2 and 8.15: a From field added later breaks the
// signature). Absent fields are not listed.
func headerList(names []string, fields []field) []string {
	var list []string
	for _, name := range names {
		n := 0
		for _, f := range fields {
			if f.name == name {
				n++
			}
		}
		if name == "from" {
			n++
		}
		for range n {
			list = append(list, name)
		}
	}
	return list
}

// signField makes one DKIM-Signature field, folded, ending in CRLF.
func signField(k *signingKey, fields []field, bh string, now time.Time) ([]byte, error) {
	list := headerList(k.headers, fields)
	f := &folder{}
	f.b = append(f.b, "DKIM-Signature:"...)
	f.col = len(f.b)
	f.tag("v=1;")
	f.tag("a=" + string(k.key.Algorithm) + ";")
	f.tag("c=relaxed/relaxed;")
	f.tag("d=" + k.key.Domain + ";")
	f.tag("s=" + k.key.Selector + ";")
	f.tag("t=" + strconv.FormatInt(now.Unix(), 10) + ";")
	f.list("h=", list)
	f.tag("bh=" + bh + ";")
	f.tag("b=")
	unsigned := len(f.b)

	// The hash: the signed fields picked from the bottom up (RFC 6376,
	// section 5.4.2), then this field with an empty b= and without its
	// final CRLF (section 3.7).
	h := sha256.New()
	used := map[string]int{}
	var buf []byte
	for _, name := range list {
		skip := used[name]
		used[name]++
		for i := len(fields) - 1; i >= 0; i-- {
			if fields[i].name != name {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			buf = relaxedHeader(buf[:0], fields[i].raw, true)
			h.Write(buf)
			break
		}
	}
	h.Write(relaxedHeader(buf[:0], f.b, false))
	digest := h.Sum(nil)

	opts := crypto.SignerOpts(crypto.SHA256)
	if k.key.Algorithm == Ed25519SHA256 {
		// RFC 8463, section 3: PureEdDSA over the SHA-256 hash.
		opts = crypto.Hash(0)
	}
	sig, err := k.key.Signer.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("dkim signing as %s: %w", k.key.Name(), err)
	}
	f.b = f.b[:unsigned]
	f.base64(base64.StdEncoding.EncodeToString(sig))
	f.b = append(f.b, '\r', '\n')
	return f.b, nil
}

// folder writes a header field folded at 78 columns: a tag goes on a new
// line (CRLF TAB) when it does not fit. Folding is only where FWS is
// allowed: between tags, around the colons of h= and inside b=.
type folder struct {
	b   []byte
	col int
}

const foldWidth = 78

func (f *folder) room(n int) {
	if f.col+n > foldWidth {
		f.b = append(f.b, "\r\n\t"...)
		f.col = 8
		return
	}
	f.b = append(f.b, ' ')
	f.col++
}

func (f *folder) tag(t string) {
	f.room(len(t))
	f.b = append(f.b, t...)
	f.col += len(t)
}

// list writes "h=a:b:c;", folding after a colon when a name does not fit.
func (f *folder) list(tag string, names []string) {
	for i, name := range names {
		t := name + ":"
		if i == len(names)-1 {
			t = name + ";"
		}
		if i == 0 {
			f.tag(tag + t)
			continue
		}
		if f.col+len(t) > foldWidth {
			f.b = append(f.b, "\r\n\t"...)
			f.col = 8
		}
		f.b = append(f.b, t...)
		f.col += len(t)
	}
}

// base64 writes b='s value, folded to fill the lines.
func (f *folder) base64(v string) {
	for len(v) > 0 {
		if f.col >= foldWidth {
			f.b = append(f.b, "\r\n\t"...)
			f.col = 8
		}
		n := min(foldWidth-f.col, len(v))
		f.b = append(f.b, v[:n]...)
		f.col += n
		v = v[n:]
	}
}

// signingKeyFor returns the signing entry of a key under its config.
func signingKeyFor(k *Key, sc *signerConf) *signingKey {
	return &signingKey{key: k, headers: sc.headers}
}

// String returns "selector._domainkey.domain (algorithm)".
func (s Signature) String() string {
	return strings.Join([]string{s.Selector, "._domainkey.", s.Domain, " (", string(s.Algorithm), ")"}, "")
}
