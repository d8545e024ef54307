package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// Resolver is what policy discovery needs of DNS: the _mta-sts TXT record
// and the addresses of the policy host. *resolver.Resolver, the app's
// resolver, is one: policy hosts are resolved with it, never with the
// system's resolver, so that they are looked up the way MX hosts are.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) (*resolver.TXTResult, error)
	LookupA(ctx context.Context, host string) (*resolver.IPResult, error)
	LookupAAAA(ctx context.Context, host string) (*resolver.IPResult, error)
}

// MaxPolicySize is the largest policy body read: a real policy is a few
// hundred bytes, so 64 KiB only stops a misconfigured or hostile host
// from making us read more.
const MaxPolicySize = 64 << 10

// DefaultFetchTimeout bounds a fetch when Fetcher.Timeout is zero: a
// minute, the default of the app's timeouts.mta_sts.
const DefaultFetchTimeout = time.Minute

// WellKnownPath is where the policy lives on mta-sts.DOMAIN.
const WellKnownPath = "/.well-known/mta-sts.txt"

// Fetcher fetches policies over HTTPS (RFC 8461, section 3.3). Its fields
// must not change once it is in use; it is safe for concurrent use.
type Fetcher struct {
	// DNS resolves the policy host, and the TXT records for a Cache.
	DNS Resolver
	// RootCAs verifies the policy host's certificate; nil means the
	// system's roots.
	RootCAs *x509.CertPool
	// Timeout bounds one fetch, from the first DNS query to the last byte
	// of the body. Zero means DefaultFetchTimeout.
	Timeout time.Duration
	// Port is the policy host's TCP port. Zero means 443, the only port
	// RFC 8461 knows: any other value is a hook for tests, whose servers
	// cannot bind 443. The URL, the Host header and the certificate check
	// are the same whatever the port.
	Port int
}

// Fetch fetches and parses the policy of domain (an ASCII host name, in
// A-label form for international names): a GET of
// https://mta-sts.DOMAIN/.well-known/mta-sts.txt, over a connection to an
// address the DNS resolver gives for mta-sts.DOMAIN (IPv4 addresses
// first, then IPv6), with a certificate that PKIX-verifies for
// mta-sts.DOMAIN. It fails on any status but 200 (redirects are not
// followed), a body over MaxPolicySize, a media type other than
// text/plain (RFC 8461, section 3.3 says senders SHOULD check it, and we
// do: it keeps a host that lets users publish files from publishing a
// policy by accident; parameters such as charset are ignored), or a
// policy that does not parse. No HTTP cache is used, nor any proxy.
//
// The policy's Fetched is the time the fetch started; its ID is left
// empty. Errors are *Error, temporary or permanent.
func (f *Fetcher) Fetch(ctx context.Context, domain string) (*Policy, error) {
	domain, err := normalizeDomain(domain)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	body, err := f.get(ctx, domain)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(body)
	if err != nil {
		return nil, permanent(domain, err)
	}
	p.Fetched = started
	return p, nil
}

// get makes the request and returns the checked body.
func (f *Fetcher) get(ctx context.Context, domain string) ([]byte, error) {
	host := "mta-sts." + domain
	client := &http.Client{
		Transport: f.transport(),
		// RFC 8461, section 3.3: "HTTP 3xx redirects MUST NOT be
		// followed". The 3xx response is returned, and refused below.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+WellKnownPath, nil)
	if err != nil {
		return nil, permanent(domain, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, &Error{Domain: domain, Kind: requestKind(err), Err: fmt.Errorf("fetching policy: %w", unwrapURL(err))}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		kind := resolver.Permanent
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			kind = resolver.Temporary
		}
		msg := resp.Status
		if loc := resp.Header.Get("Location"); loc != "" {
			msg += " to " + loc + " (redirects are not followed)"
		}
		return nil, &Error{Domain: domain, Kind: kind, Err: fmt.Errorf("%w %s", ErrStatus, msg)}
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "text/plain" {
		return nil, permanent(domain, fmt.Errorf("%w: %q", ErrMediaType, resp.Header.Get("Content-Type")))
	}
	if resp.ContentLength > MaxPolicySize {
		return nil, permanent(domain, fmt.Errorf("%w: Content-Length %d", ErrTooLarge, resp.ContentLength))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, &Error{Domain: domain, Kind: requestKind(err), Err: fmt.Errorf("reading policy: %w", err)}
	}
	if len(body) > MaxPolicySize {
		return nil, permanent(domain, ErrTooLarge)
	}
	return body, nil
}

// transport is an HTTP/1.1 transport for one fetch: no proxy, no kept
// connections, TLS 1.2 or later verified against RootCAs, and a dialer
// that resolves with f.DNS.
func (f *Fetcher) transport() *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            f.dial,
		TLSClientConfig:        &tls.Config{RootCAs: f.RootCAs, MinVersion: tls.VersionTLS12},
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 16 << 10,
	}
}

// dial connects to the host of addr, resolved with f.DNS: its IPv4
// addresses in DNS order, then its IPv6 ones, the first that answers.
// The port of addr (443, from the URL) is replaced by f.Port when set.
func (f *Fetcher) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if f.Port != 0 {
		port = strconv.Itoa(f.Port)
	}
	var addrs []netip.Addr
	var lookupErrs []error
	for _, lookup := range []func(context.Context, string) (*resolver.IPResult, error){f.DNS.LookupA, f.DNS.LookupAAAA} {
		res, err := lookup(ctx, host)
		if err != nil {
			lookupErrs = append(lookupErrs, err)
			continue
		}
		addrs = append(addrs, res.Addrs...)
	}
	if len(addrs) == 0 {
		kind := resolver.Permanent
		for _, e := range lookupErrs {
			if !resolver.IsPermanent(e) {
				kind = resolver.Temporary
			}
		}
		err := fmt.Errorf("%s has no address", host)
		if len(lookupErrs) > 0 {
			err = errors.Join(lookupErrs...)
		}
		return nil, &hostLookupError{kind: kind, err: err}
	}
	var d net.Dialer
	var dialErrs []error
	for _, ip := range addrs {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		dialErrs = append(dialErrs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(dialErrs...)
}

// requestKind classifies a failed request: a certificate that does not
// verify, or a policy host without addresses, is the domain's doing and
// permanent; anything else (timeouts, refused connections, DNS server
// failures, a connection cut short) is temporary.
func requestKind(err error) resolver.Kind {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid):
		return resolver.Permanent
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return resolver.Temporary
	}
	var lookup *hostLookupError
	if errors.As(err, &lookup) {
		return lookup.kind
	}
	return resolver.Temporary
}

// hostLookupError is the failure to find any address for the policy host:
// permanent when every lookup failed for good (no such name, no address
// of either family), else temporary.
type hostLookupError struct {
	kind resolver.Kind
	err  error
}

func (e *hostLookupError) Error() string { return e.err.Error() }
func (e *hostLookupError) Unwrap() error { return e.err }

// unwrapURL drops the *url.Error wrapper that http.Client adds: its
// message repeats the URL, which the domain already says.
func unwrapURL(err error) error {
	var u *url.Error
	if errors.As(err, &u) {
		return u.Err
	}
	return err
}
