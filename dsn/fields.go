package dsn

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// describe gathers what the notice says of m and its recipients with news.
func describe(o Options, m *queue.Message, news []queue.News, now time.Time) (*Data, error) {
	if len(news) == 0 {
		return nil, fmt.Errorf("dsn: no news for message %s", m.ID)
	}
	d := &Data{
		ReportingMTA: o.ReportingMTA,
		Sender:       m.From,
		QueueID:      m.ID,
		EnvID:        m.EnvID,
		Arrived:      m.Arrived.In(now.Location()),
		Now:          now,
	}
	for _, n := range news {
		if n.Index < 0 || n.Index >= len(m.Recipients) {
			return nil, fmt.Errorf("dsn: news for recipient %d of message %s, which has %d", n.Index, m.ID, len(m.Recipients))
		}
		if !knownKind(n.Kind) {
			return nil, fmt.Errorf("dsn: unknown kind of news %q for recipient %d of message %s", n.Kind, n.Index, m.ID)
		}
		d.add(recipient(&m.Recipients[n.Index], n, now.Location()))
	}
	d.Kind = d.Recipients[0].Action
	for _, r := range d.Recipients {
		if r.Action != d.Kind {
			d.Kind = "mixed"
			break
		}
	}
	return d, nil
}

// recipient describes one recipient with news.
func recipient(r *queue.Recipient, n queue.News, loc *time.Location) Recipient {
	rec := Recipient{
		Address:         r.Addr,
		OriginalAddress: r.ORCPT,
		Action:          n.Kind,
		Detail:          r.LastDetail,
		Attempts:        r.Attempts,
		Expired:         r.LastError == "expired",
	}
	if !r.LastAttempt.IsZero() {
		rec.LastAttempt = r.LastAttempt.In(loc)
	}
	if n.Kind == "delayed" && !n.WillRetryUntil.IsZero() {
		rec.WillRetryUntil = n.WillRetryUntil.In(loc)
	}
	if rep := r.LastReply; rep != nil && rep.Code >= 200 && rep.Code <= 599 {
		rec.Reply = rep.String()
		rec.LocalReply = rep.Local
		if !rep.Local {
			rec.RemoteMTA = mtaName(r.Host)
		}
	}
	if a := lastAttempt(r.History); rec.Expired && a != nil && a.Reply != nil && !a.Reply.Local && a.Host != "" {
		// An expiry is this host's decision, but the sender needs what
		// the server said last, and which server it was (RFC 3464,
		// sections 2.3.5 and 2.3.6: a recipient attempted over SMTP is
		// reported with Remote-MTA and the SMTP reply).
		rec.Reply, rec.LocalReply, rec.RemoteMTA = a.Reply.String(), false, mtaName(a.Host)
	}
	rec.Status = statusCode(n.Kind, r.LastReply, r.LastError)
	return rec
}

// lastAttempt returns the last attempt of a history (nil when empty).
func lastAttempt(history []queue.Attempt) *queue.Attempt {
	if len(history) == 0 {
		return nil
	}
	return &history[len(history)-1]
}

// statusCode returns the RFC 3463 status code of a recipient: the reply's
// enhanced code when it is valid and agrees with the reply code, else one
// derived from the reply code (or the action) and the kind of failure.
func statusCode(kind string, rep *transport.Reply, errClass string) string {
	class := 0
	switch kind {
	case "failed":
		class = 5
	case "delayed":
		class = 4
	default:
		class = 2
	}
	if rep != nil {
		c := rep.Code / 100
		if c == 2 || c == 4 || c == 5 {
			if (class == 2) != (c == 2) {
				// A reply of the wrong kind (a 2xx for a failure, a
				// failure's reply for a delivery) says nothing of this
				// outcome.
				rep = nil
			} else {
				class = c
			}
		} else {
			rep = nil
		}
	}
	if rep != nil && validStatus(rep.Enhanced) && int(rep.Enhanced[0]-'0') == class {
		return rep.Enhanced
	}
	if class == 2 {
		return "2.0.0"
	}
	detail := "0.0"
	switch errClass {
	case "expired":
		detail = "4.7" // delivery time expired
	case "dns":
		detail = "4.4" // unable to route
	case "connection":
		detail = "4.1" // no answer from host
	case "tls", "dane", "mta_sts":
		detail = "7.0" // other or undefined security status
	case "config":
		detail = "3.5" // system incorrectly configured
	case "unexpected_reply":
		detail = "5.0" // other or undefined protocol status
	}
	return strconv.Itoa(class) + "." + detail
}

// validStatus reports whether s is an RFC 3463 status code: class 2, 4 or
// 5, then subject and detail of 1 to 3 digits without leading zeros (RFC
// 3464, section 2.3.4).
func validStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 || (len(p) > 1 && p[0] == '0') {
			return false
		}
		for i := 0; i < len(p); i++ {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

// mtaName returns the name of a remote MTA for a "dns" MTA-name (RFC 3464,
// section 2.3.5): its host name, or an IP address as an address literal
// (RFC 5321, section 4.1.3). "" when unknown.
func mtaName(host string) string {
	host = strings.TrimSuffix(strings.TrimSpace(host), ".")
	if host == "" {
		return ""
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Is4() || ip.Is4In6() {
			return "[" + ip.Unmap().String() + "]"
		}
		return "[IPv6:" + ip.String() + "]"
	}
	return host
}

// deliveryStatus returns the content of the message/delivery-status (or
// message/global-delivery-status) part: the per-message fields, then a
// group of per-recipient fields for each recipient, each group after an
// empty line (RFC 3464, section 2.1).
func deliveryStatus(d *Data, global bool, now time.Time) string {
	var b strings.Builder
	p := &printer{w: &b}
	clean := func(s string) string { return fieldText(s, global) }
	if d.EnvID != "" {
		// Printable US-ASCII even in a global report (RFC 3461, section
		// 4.4).
		p.field("Original-Envelope-Id", fieldText(d.EnvID, false))
	}
	p.field("Reporting-MTA", "dns; "+clean(d.ReportingMTA))
	if !d.Arrived.IsZero() {
		p.field("Arrival-Date", formatDate(d.Arrived, now))
	}
	for _, r := range d.Recipients {
		p.line("")
		if r.OriginalAddress != "" {
			p.field("Original-Recipient", address(r.OriginalAddress, global))
		}
		p.field("Final-Recipient", address(r.Address, global))
		p.field("Action", r.Action)
		p.field("Status", r.Status)
		if r.RemoteMTA != "" {
			p.field("Remote-MTA", "dns; "+clean(r.RemoteMTA))
		}
		if r.Reply != "" {
			p.field("Diagnostic-Code", "smtp; "+clean(r.Reply))
		}
		if !r.LastAttempt.IsZero() {
			p.field("Last-Attempt-Date", formatDate(r.LastAttempt, now))
		}
		if !r.WillRetryUntil.IsZero() {
			p.field("Will-Retry-Until", formatDate(r.WillRetryUntil, now))
		}
	}
	return b.String()
}

// address returns an address field's value: "rfc822;" and the address as
// received (RFC 3464, section 2.3.2: exactly, but for characters a field
// cannot hold), or, for a non-ASCII address, "utf-8;" and the address
// (message/global-delivery-status) or its utf-8-addr-xtext form
// (message/delivery-status), RFC 6533, section 3.
func address(addr string, global bool) string {
	addr = dropControls(addr)
	if isASCII(addr) {
		return "rfc822;" + addr
	}
	addr = strings.ToValidUTF8(addr, "\uFFFD")
	if global {
		return "utf-8;" + addr
	}
	return "utf-8;" + utf8AddrXtext(addr)
}

// utf8AddrXtext encodes an address as RFC 6533's utf-8-addr-xtext: ASCII
// graphic characters but "+", "=" and "\" as they are, everything else as
// \x{HEX}.
func utf8AddrXtext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > ' ' && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\x{%X}`, r)
	}
	return b.String()
}

// fieldText makes s fit a DSN field: control characters dropped (a field
// holds no CR or LF), and, outside a global report, every non-ASCII
// character replaced by "?" (RFC 3464's text is US-ASCII); in a global
// report, invalid UTF-8 is replaced.
func fieldText(s string, global bool) string {
	s = dropControls(s)
	if global {
		return strings.ToValidUTF8(s, "\uFFFD")
	}
	if isASCII(s) {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "?") {
		if r >= 0x80 {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// dropControls removes C0 controls (tab becomes a space) and DEL.
func dropControls(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\t':
			b.WriteByte(' ')
		case c < ' ' || c == 0x7f:
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isControl(r rune) bool { return r < ' ' || r == 0x7f }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// formatDate writes t as an RFC 5322 date-time with a numeric zone (RFC
// 3464, sections 2.2.5, 2.3.7 and 2.3.9), in now's location.
func formatDate(t, now time.Time) string {
	return t.In(now.Location()).Format("Mon, 02 Jan 2006 15:04:05 -0700")
}
