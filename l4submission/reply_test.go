package l4submission

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func delivered(rcpt string) delivery.RecipientReport {
	return delivery.RecipientReport{Rcpt: rcpt, Status: transport.Delivered, Host: "mx.test",
		Reply: &transport.Reply{Code: 250, Enhanced: "2.0.0", Lines: []string{"ok"}}}
}

func deferred(rcpt string, reply *transport.Reply, err string) delivery.RecipientReport {
	return delivery.RecipientReport{Rcpt: rcpt, Status: transport.Deferred, Host: "mx.test", Reply: reply, Error: err}
}

func failed(rcpt string, reply *transport.Reply, err string) delivery.RecipientReport {
	return delivery.RecipientReport{Rcpt: rcpt, Status: transport.Failed, Host: "mx.test", Reply: reply, Error: err}
}

func TestDecide(t *testing.T) {
	busy := &transport.Reply{Code: 450, Enhanced: "4.2.1", Lines: []string{"mailbox busy"}}
	unknown := &transport.Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{"no such user"}}
	badAddr := &transport.Reply{Code: 553, Enhanced: "5.1.3", Lines: []string{"bad address"}}
	tests := []struct {
		name      string
		report    []delivery.RecipientReport
		already   int
		code      int
		enhanced  smtp.EnhancedCode
		lines     []string
		result    string
		delivered []string
	}{
		{
			name:   "all delivered",
			report: []delivery.RecipientReport{delivered("a@x"), delivered("b@y")},
			code:   250, enhanced: smtp.EnhancedCode{2, 0, 0},
			lines:     []string{"delivered to 2 recipients"},
			result:    resultDelivered,
			delivered: []string{"a@x", "b@y"},
		},
		{
			name:   "the rest delivered after an earlier try",
			report: []delivery.RecipientReport{delivered("b@y")}, already: 1,
			code: 250, enhanced: smtp.EnhancedCode{2, 0, 0},
			lines:     []string{"delivered to 2 recipients"},
			result:    resultDelivered,
			delivered: []string{"b@y"},
		},
		{
			name:   "deferred with a reply",
			report: []delivery.RecipientReport{deferred("a@x", busy, "")},
			code:   451, enhanced: smtp.EnhancedCode{4, 2, 1},
			lines:  []string{"<a@x> deferred: host mx.test said: 450 4.2.1 mailbox busy", "not delivered to every recipient; try again later"},
			result: resultDeferred,
		},
		{
			name:   "deferred without a reply",
			report: []delivery.RecipientReport{{Rcpt: "a@x", Status: transport.Deferred, Error: "dial tcp 127.0.0.1:25: connect: connection refused"}},
			code:   451, enhanced: smtp.EnhancedCode{4, 4, 0},
			lines:  []string{"<a@x> deferred: dial tcp 127.0.0.1:25: connect: connection refused", "not delivered to every recipient; try again later"},
			result: resultDeferred,
		},
		{
			name:   "delivered and deferred",
			report: []delivery.RecipientReport{delivered("a@x"), deferred("b@y", busy, "")},
			code:   451, enhanced: smtp.EnhancedCode{4, 2, 1},
			lines: []string{"<b@y> deferred: host mx.test said: 450 4.2.1 mailbox busy",
				"not delivered to every recipient; try again later (delivered to 1 of 2 recipients, who will not get the same message again)"},
			result:    resultDeferred,
			delivered: []string{"a@x"},
		},
		{
			name:   "deferred and failed: a retry may help",
			report: []delivery.RecipientReport{failed("a@x", unknown, ""), deferred("b@y", busy, "")},
			code:   451, enhanced: smtp.EnhancedCode{4, 2, 1},
			lines: []string{"<b@y> deferred: host mx.test said: 450 4.2.1 mailbox busy",
				"<a@x> failed: host mx.test said: 550 5.1.1 no such user",
				"not delivered to every recipient; try again later"},
			result: resultDeferred,
		},
		{
			name:   "failed",
			report: []delivery.RecipientReport{failed("a@x", unknown, "")},
			code:   550, enhanced: smtp.EnhancedCode{5, 1, 1},
			lines:  []string{"<a@x> failed: host mx.test said: 550 5.1.1 no such user"},
			result: resultRefused,
		},
		{
			name:   "a code that does not answer DATA",
			report: []delivery.RecipientReport{failed("a@x", badAddr, "")},
			code:   554, enhanced: smtp.EnhancedCode{5, 1, 3},
			lines:  []string{"<a@x> failed: host mx.test said: 553 5.1.3 bad address"},
			result: resultRefused,
		},
		{
			name:   "failed without a reply",
			report: []delivery.RecipientReport{{Rcpt: "a@nowhere.test", Status: transport.Failed, Route: "mx", Error: "lookup nowhere.test: no such domain"}},
			code:   554, enhanced: smtp.EnhancedCode{5, 4, 4},
			lines:  []string{"<a@nowhere.test> failed: lookup nowhere.test: no such domain"},
			result: resultRefused,
		},
		{
			name:   "delivered and failed",
			report: []delivery.RecipientReport{delivered("a@x"), failed("b@y", unknown, "")},
			code:   550, enhanced: smtp.EnhancedCode{5, 1, 1},
			lines:     []string{"<b@y> failed: host mx.test said: 550 5.1.1 no such user", "delivered to the other 1 of 2 recipients"},
			result:    resultRefused,
			delivered: []string{"a@x"},
		},
		{
			name:   "a reply that would break the line",
			report: []delivery.RecipientReport{{Rcpt: "a@x", Status: transport.Deferred, Error: "one\r\ntwo"}},
			code:   451, enhanced: smtp.EnhancedCode{4, 4, 0},
			lines:  []string{"<a@x> deferred: one  two", "not delivered to every recipient; try again later"},
			result: resultDeferred,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := decide(&delivery.Report{Recipients: tt.report}, tt.already)
			assert.Equal(t, tt.code, v.code)
			assert.Equal(t, tt.enhanced, v.enhanced)
			assert.Equal(t, tt.lines, v.lines)
			assert.Equal(t, tt.result, v.result)
			assert.Equal(t, tt.delivered, v.delivered)
		})
	}
}

func TestDecideManyRecipients(t *testing.T) {
	var rrs []delivery.RecipientReport
	for i := range 25 {
		rrs = append(rrs, deferred(fmt.Sprintf("r%d@x", i), nil, "timeout"))
	}
	v := decide(&delivery.Report{Recipients: rrs}, 0)
	assert.Len(t, v.lines, maxReplyRcpts+2)
	assert.Equal(t, "and 15 more recipients", v.lines[maxReplyRcpts])

	long := decide(&delivery.Report{Recipients: []delivery.RecipientReport{deferred("a@x", nil, strings.Repeat("é", 400))}}, 0)
	assert.LessOrEqual(t, len(long.lines[0]), maxReplyLine)
	assert.True(t, strings.HasSuffix(long.lines[0], "é..."), "cut on a rune boundary")
}

func TestVerdictReply(t *testing.T) {
	v := verdict{code: 451, enhanced: smtp.EnhancedCode{4, 2, 1}, lines: []string{"<a@x> deferred", "try again later"}}
	err := v.reply()
	assert.Equal(t, 451, err.Code)
	assert.Equal(t, smtp.EnhancedCode{4, 2, 1}, err.EnhancedCode)
	assert.Equal(t, "4.2.1 <a@x> deferred\ntry again later", err.Message,
		"go-smtp writes the code on the last line; the others carry it")
}
