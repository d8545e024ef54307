package resolver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// ednsSize is the EDNS0 UDP payload size offered: 1232 bytes, the DNS Flag
// Day 2020 value that avoids IP fragmentation.
const ednsSize = 1232

// exchange asks the servers about name and qtype, in turn, for the
// configured number of attempts, and returns the first answer that is
// NOERROR or NXDOMAIN (the answers that settle a question). A SERVFAIL from
// a trusted validating resolver is checked for bogus data. cd sets the
// checking-disabled bit.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16, cd bool) (*dns.Msg, server, error) {
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
		return nil, server{}, r.fail(name, qtype, server{}, -1, fmt.Errorf("waiting for a free query slot: %w", ctx.Err()))
	}

	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	q.AuthenticatedData = true // ask for AD (RFC 6840, section 5.7)
	q.CheckingDisabled = cd
	q.SetEdns0(ednsSize, true) // DO: DNSSEC records and validation wanted

	start := int(r.next.Add(1)) % len(r.s.servers)
	var (
		last    *dns.Msg
		lastSrv server
		lastErr error
	)
	for attempt := 0; attempt < r.s.attempts; attempt++ {
		for i := range r.s.servers {
			srv := r.s.servers[(start+i)%len(r.s.servers)]
			resp, err := r.ask(ctx, srv, q)
			if err != nil {
				lastErr, lastSrv, last = err, srv, nil
				if ctx.Err() != nil {
					return nil, srv, r.fail(name, qtype, srv, -1, ctx.Err())
				}
				continue
			}
			metricErrors(resp.Rcode)
			switch resp.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return resp, srv, nil
			}
			last, lastSrv = resp, srv
			r.logger().Warn("dns server failed a query",
				zap.String("name", trimDot(name)),
				zap.String("type", dns.TypeToString[qtype]),
				zap.String("server", srv.String()),
				zap.String("rcode", dns.RcodeToString[resp.Rcode]))
		}
	}
	if last == nil {
		r.logger().Warn("dns query got no answer",
			zap.String("name", trimDot(name)),
			zap.String("type", dns.TypeToString[qtype]),
			zap.String("server", lastSrv.String()),
			zap.Error(lastErr))
		reason := lastErr
		var ne net.Error
		if errors.As(lastErr, &ne) && ne.Timeout() {
			reason = fmt.Errorf("%w: %v", ErrTimeout, lastErr)
		}
		return nil, lastSrv, r.fail(name, qtype, lastSrv, -1, reason)
	}
	return last, lastSrv, nil
}

// ask sends q to one server, again over TCP when the UDP answer is
// truncated (or, with try_tcp_on_error, when UDP fails).
func (r *Resolver) ask(ctx context.Context, srv server, q *dns.Msg) (*dns.Msg, error) {
	resp, err := r.askOnce(ctx, srv.proto, srv, q)
	if srv.proto == "udp" {
		switch {
		case err == nil && resp.Truncated:
			resp, err = r.askOnce(ctx, "tcp", srv, q)
		case err != nil && r.s.tcpOnError && ctx.Err() == nil:
			resp, err = r.askOnce(ctx, "tcp", srv, q)
		}
	}
	return resp, err
}

func (r *Resolver) askOnce(ctx context.Context, proto string, srv server, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.s.timeout)
	defer cancel()
	c := &dns.Client{Net: proto, Timeout: r.s.timeout, UDPSize: ednsSize}
	if proto == "tls" {
		c.Net = "tcp-tls"
		c.TLSConfig = &tls.Config{ServerName: srv.serverName, MinVersion: tls.VersionTLS12, RootCAs: r.rootCAs}
	}
	metricQuery(q.Question[0].Qtype, proto)
	resp, _, err := c.ExchangeContext(ctx, q, srv.addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", srv, err)
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, q.Question[0].Name) || resp.Question[0].Qtype != q.Question[0].Qtype {
		return nil, fmt.Errorf("%s: answer is for another question", srv)
	}
	return resp, nil
}

// fail builds the error of a lookup that got no settling answer.
func (r *Resolver) fail(name string, qtype uint16, srv server, rcode int, reason error) *Error {
	if reason == nil {
		reason = ErrTimeout
	}
	if errors.Is(reason, context.DeadlineExceeded) {
		reason = fmt.Errorf("%w: %v", ErrTimeout, reason)
	}
	var s string
	if srv.addr != "" {
		s = srv.String()
	}
	return &Error{Name: trimDot(name), Type: qtype, Kind: Temporary, Reason: reason, Server: s, Rcode: rcode}
}

func trimDot(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// now is the clock; tests move it.
var now = time.Now
