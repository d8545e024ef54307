package l4submission

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// The outcomes of a message, for logs and metrics.
const (
	resultDelivered = "delivered"
	resultDeferred  = "deferred"
	resultRefused   = "refused"
)

// Bounds on a reply: the lines that name recipients, and each line's
// length (RFC 5321 allows 512 octets per reply line).
const (
	maxReplyRcpts = 10
	maxReplyLine  = 400
)

// dataCodes are the permanent failure codes RFC 5321 (4.3.2) lists for
// the end of DATA; another one from the server (a 500, a 553 to RCPT) is
// answered as 554, with the server's own reply in the text.
var dataCodes = map[int]bool{550: true, 552: true, 554: true}

// verdict is the reply to the end of a message's data.
type verdict struct {
	code     int
	enhanced smtp.EnhancedCode
	lines    []string
	result   string
	// delivered are the recipients delivered in this try.
	delivered []string
	// already is how many recipients an earlier try delivered to.
	already int
}

// reply returns the verdict as the error go-smtp writes as the reply. A
// 250 goes this way too: go-smtp's own 250 says "queued", which this
// handler does not do.
//
// go-smtp writes the enhanced status code on the last line of a reply
// only; RFC 2034 wants it on every line, so the others carry it in their
// text.
func (v verdict) reply() *smtp.SMTPError {
	lines := make([]string, len(v.lines))
	for i, l := range v.lines {
		if i < len(v.lines)-1 && v.enhanced != smtp.EnhancedCodeNotSet {
			l = fmt.Sprintf("%d.%d.%d %s", v.enhanced[0], v.enhanced[1], v.enhanced[2], l)
		}
		lines[i] = l
	}
	return &smtp.SMTPError{Code: v.code, EnhancedCode: v.enhanced, Message: strings.Join(lines, "\n")}
}

// decide turns a delivery report into the reply (the package
// documentation explains the choice). already is how many recipients an
// earlier try delivered the message to (they were not in this delivery).
func decide(report *delivery.Report, already int) verdict {
	v := verdict{already: already}
	var deferred, failed []delivery.RecipientReport
	for _, rr := range report.Recipients {
		switch rr.Status {
		case transport.Delivered:
			v.delivered = append(v.delivered, rr.Rcpt)
		case transport.Failed:
			failed = append(failed, rr)
		default:
			deferred = append(deferred, rr)
		}
	}
	delivered := already + len(v.delivered)
	total := delivered + len(deferred) + len(failed)

	switch {
	case len(deferred) > 0:
		v.result, v.code = resultDeferred, 451
		v.enhanced = enhancedOf(deferred[0].Reply, 4, smtp.EnhancedCode{4, 4, 0})
		v.lines = rcptLines(append(deferred, failed...))
		last := "not delivered to every recipient; try again later"
		if delivered > 0 {
			last += fmt.Sprintf(" (delivered to %d of %d recipients, who will not get the same message again)", delivered, total)
		}
		v.lines = append(v.lines, last)
	case len(failed) > 0:
		v.result, v.code = resultRefused, 554
		if r := failed[0].Reply; r != nil && dataCodes[r.Code] {
			v.code = r.Code
		}
		v.enhanced = enhancedOf(failed[0].Reply, 5, smtp.EnhancedCode{5, 4, 4})
		v.lines = rcptLines(failed)
		if delivered > 0 {
			v.lines = append(v.lines, fmt.Sprintf("delivered to the other %d of %d recipients", delivered, total))
		}
	default:
		v.result, v.code = resultDelivered, 250
		v.enhanced = smtp.EnhancedCode{2, 0, 0}
		v.lines = []string{fmt.Sprintf("delivered to %d recipient%s", delivered, plural(delivered))}
	}
	return v
}

// rcptLines says, one line per recipient, why it was not delivered.
func rcptLines(rrs []delivery.RecipientReport) []string {
	lines := make([]string, 0, min(len(rrs), maxReplyRcpts+1))
	for i, rr := range rrs {
		if i == maxReplyRcpts {
			lines = append(lines, fmt.Sprintf("and %d more recipients", len(rrs)-i))
			break
		}
		var why string
		switch {
		case rr.Reply != nil && rr.Host != "":
			why = "host " + rr.Host + " said: " + rr.Reply.String()
		case rr.Reply != nil:
			why = rr.Reply.String()
		case rr.Error != "":
			why = rr.Error
		default:
			why = "no outcome"
		}
		lines = append(lines, oneLine("<"+rr.Rcpt+"> "+rr.Status.String()+": "+why))
	}
	return lines
}

// enhancedOf returns the reply's enhanced status code when it has one of
// the class, else def.
func enhancedOf(r *transport.Reply, class int, def smtp.EnhancedCode) smtp.EnhancedCode {
	if r == nil || r.Enhanced == "" {
		return def
	}
	parts := strings.Split(r.Enhanced, ".")
	if len(parts) != 3 {
		return def
	}
	var e smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return def
		}
		e[i] = n
	}
	if e[0] != class {
		return def
	}
	return e
}

// oneLine makes s fit on one bounded reply line.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReplyLine {
		s = strings.ToValidUTF8(s[:maxReplyLine-3], "") + "..."
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
