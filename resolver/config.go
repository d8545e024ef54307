package resolver

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
)

// Config is the resolver's configuration: the `resolver` key of the smtp
// app.
type Config struct {
	// Servers are the DNS servers asked, in order, each as
	// "udp://IP:PORT", "tcp://IP:PORT" or "tls://IP:PORT#SERVERNAME" (DNS
	// over TLS; the name is what the server's certificate must carry), or
	// one of the presets "cloudflare", "cloudflare-tls", "google",
	// "google-tls", "quad9", "quad9-tls", or "system" for the servers of
	// /etc/resolv.conf (this machine's port 53 when there is no such
	// file, as the C library does). The port defaults to 53 (853 for
	// tls). Default: ["system"].
	Servers []string `json:"servers,omitempty"`

	// TrustAD believes the AD (authenticated data) bit the servers set,
	// which makes answers DNSSEC-secure (DANE depends on it). Only a
	// validating resolver reached over a trusted path should be trusted
	// so. Default: true when every server is on loopback (a validating
	// resolver on this machine, such as unbound) or a DNS-over-TLS preset,
	// false otherwise.
	TrustAD *bool `json:"trust_ad,omitempty"`

	// Timeout is how long one query to one server may take. Default: 5s
	// (or resolv.conf's timeout with "system").
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Attempts is how many times each server is asked before a lookup
	// fails. Default: 2 (or resolv.conf's attempts with "system").
	Attempts int `json:"attempts,omitempty"`

	// TryTCPOnError asks again over TCP when a UDP query fails with a
	// network error or a timeout (a truncated UDP answer is always asked
	// again over TCP). Default: true.
	TryTCPOnError *bool `json:"try_tcp_on_error,omitempty"`

	// MaxInFlight is the most queries sent at once; more wait. Default: 256.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	// Cache bounds the answer cache.
	Cache *CacheConfig `json:"cache,omitempty"`
}

// CacheConfig bounds the answer cache. Answers are kept for their TTL
// (negative answers for the SOA minimum, RFC 2308), within these bounds.
type CacheConfig struct {
	// Size is the most answers kept; the least recently used go first.
	// Default: 10000. -1 turns the cache off.
	Size int `json:"size,omitempty"`

	// MinTTL is the shortest time an answer is kept, whatever its TTL.
	// Default: 0 (TTLs are honoured as they are).
	MinTTL caddy.Duration `json:"min_ttl,omitempty"`

	// MaxTTL is the longest time a positive answer is kept. Default: 1d
	// (unbound's cache-max-ttl).
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`

	// MaxNegativeTTL is the longest time a negative answer (NXDOMAIN, no
	// data) is kept. Default: 1h (unbound's cache-max-negative-ttl; RFC
	// 2308 suggests at most 3h).
	MaxNegativeTTL caddy.Duration `json:"max_negative_ttl,omitempty"`
}

// Defaults.
const (
	defaultTimeout        = 5 * time.Second
	defaultAttempts       = 2
	defaultMaxInFlight    = 256
	defaultCacheSize      = 10000
	defaultMaxTTL         = 24 * time.Hour
	defaultMaxNegativeTTL = time.Hour
)

// The presets: public validating resolvers, at the addresses and TLS names
// their operators publish.
var presets = map[string][]string{
	"cloudflare":     {"udp://1.1.1.1:53", "udp://1.0.0.1:53", "udp://[2606:4700:4700::1111]:53"},
	"cloudflare-tls": {"tls://1.1.1.1:853#cloudflare-dns.com", "tls://1.0.0.1:853#cloudflare-dns.com"},
	"google":         {"udp://8.8.8.8:53", "udp://8.8.4.4:53", "udp://[2001:4860:4860::8888]:53"},
	"google-tls":     {"tls://8.8.8.8:853#dns.google", "tls://8.8.4.4:853#dns.google"},
	"quad9":          {"udp://9.9.9.9:53", "udp://149.112.112.112:53", "udp://[2620:fe::fe]:53"},
	"quad9-tls":      {"tls://9.9.9.9:853#dns.quad9.net", "tls://149.112.112.112:853#dns.quad9.net"},
}

// server is one DNS server to ask.
type server struct {
	proto      string // "udp", "tcp" or "tls"
	addr       string // IP:port
	serverName string // for tls
	loopback   bool
}

func (s server) String() string {
	if s.proto == "tls" {
		return "tls://" + s.addr + "#" + s.serverName
	}
	return s.proto + "://" + s.addr
}

// settings is a Config with every default set and its servers parsed.
type settings struct {
	servers        []server
	trustAD        bool
	timeout        time.Duration
	attempts       int
	tcpOnError     bool
	maxInFlight    int
	cacheSize      int
	minTTL         time.Duration
	maxTTL         time.Duration
	maxNegativeTTL time.Duration
}

// resolvConfPath is read for "system"; tests point it elsewhere.
var resolvConfPath = "/etc/resolv.conf"

// settings applies defaults and parses servers. path is the config key,
// for errors.
func (c *Config) settings(path string) (*settings, error) {
	s := &settings{
		timeout:        time.Duration(c.Timeout),
		attempts:       c.Attempts,
		tcpOnError:     c.TryTCPOnError == nil || *c.TryTCPOnError,
		maxInFlight:    c.MaxInFlight,
		cacheSize:      defaultCacheSize,
		maxTTL:         defaultMaxTTL,
		maxNegativeTTL: defaultMaxNegativeTTL,
	}
	if cc := c.Cache; cc != nil {
		if cc.Size != 0 {
			s.cacheSize = cc.Size
		}
		s.minTTL = time.Duration(cc.MinTTL)
		if cc.MaxTTL != 0 {
			s.maxTTL = time.Duration(cc.MaxTTL)
		}
		if cc.MaxNegativeTTL != 0 {
			s.maxNegativeTTL = time.Duration(cc.MaxNegativeTTL)
		}
		switch {
		case cc.Size < -1:
			return nil, fmt.Errorf("%s.cache.size: %d is below -1 (-1 turns the cache off)", path, cc.Size)
		case s.minTTL < 0:
			return nil, fmt.Errorf("%s.cache.min_ttl: negative", path)
		case s.maxTTL < s.minTTL:
			return nil, fmt.Errorf("%s.cache.max_ttl: %s is below min_ttl %s", path, s.maxTTL, s.minTTL)
		case s.maxNegativeTTL < s.minTTL:
			return nil, fmt.Errorf("%s.cache.max_negative_ttl: %s is below min_ttl %s", path, s.maxNegativeTTL, s.minTTL)
		}
	}
	specs := c.Servers
	if len(specs) == 0 {
		specs = []string{"system"}
	}
	allTrusted := true
	for i, spec := range specs {
		at := fmt.Sprintf("%s.servers[%d]", path, i)
		if spec == "system" {
			conf, err := dns.ClientConfigFromFile(resolvConfPath)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				// As the C library does without resolv.conf: this machine.
				conf = &dns.ClientConfig{Servers: []string{"127.0.0.1", "::1"}, Port: "53"}
			case err != nil:
				return nil, fmt.Errorf("%s: reading %s: %w", at, resolvConfPath, err)
			}
			for _, host := range conf.Servers {
				srv, err := parseServer("udp://" + net.JoinHostPort(host, conf.Port))
				if err != nil {
					return nil, fmt.Errorf("%s: %s: %w", at, resolvConfPath, err)
				}
				s.servers = append(s.servers, srv)
				allTrusted = allTrusted && srv.loopback
			}
			if s.timeout == 0 && conf.Timeout > 0 {
				s.timeout = time.Duration(conf.Timeout) * time.Second
			}
			if s.attempts == 0 && conf.Attempts > 0 {
				s.attempts = conf.Attempts
			}
			continue
		}
		if list, ok := presets[spec]; ok {
			for _, p := range list {
				srv, _ := parseServer(p)
				s.servers = append(s.servers, srv)
			}
			allTrusted = allTrusted && strings.HasSuffix(spec, "-tls")
			continue
		}
		srv, err := parseServer(spec)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		s.servers = append(s.servers, srv)
		allTrusted = allTrusted && srv.loopback
	}
	if len(s.servers) == 0 {
		return nil, fmt.Errorf("%s.servers: no servers (resolv.conf lists none?)", path)
	}
	if c.TrustAD != nil {
		s.trustAD = *c.TrustAD
	} else {
		s.trustAD = allTrusted
	}
	if s.timeout == 0 {
		s.timeout = defaultTimeout
	}
	if s.attempts == 0 {
		s.attempts = defaultAttempts
	}
	if s.maxInFlight == 0 {
		s.maxInFlight = defaultMaxInFlight
	}
	switch {
	case s.timeout < 0:
		return nil, fmt.Errorf("%s.timeout: negative", path)
	case s.attempts < 1:
		return nil, fmt.Errorf("%s.attempts: %d is below 1", path, s.attempts)
	case s.maxInFlight < 1:
		return nil, fmt.Errorf("%s.max_in_flight: %d is below 1", path, s.maxInFlight)
	}
	return s, nil
}

// parseServer reads "udp://IP:PORT", "tcp://IP:PORT" or
// "tls://IP:PORT#NAME".
func parseServer(spec string) (server, error) {
	u, err := url.Parse(spec)
	if err != nil || u.Host == "" {
		return server{}, fmt.Errorf("%q is not a server: want udp://IP:PORT, tcp://IP:PORT, tls://IP:PORT#NAME, a preset or system", spec)
	}
	srv := server{proto: u.Scheme, serverName: u.Fragment}
	port := "53"
	switch u.Scheme {
	case "udp", "tcp":
		if u.Fragment != "" {
			return server{}, fmt.Errorf("%q: a server name (#...) is only for tls://", spec)
		}
	case "tls":
		port = "853"
	default:
		return server{}, fmt.Errorf("%q: unknown scheme %q (want udp, tcp or tls)", spec, u.Scheme)
	}
	if u.Path != "" || u.RawQuery != "" || u.User != nil {
		return server{}, fmt.Errorf("%q: a server is scheme://IP:PORT only", spec)
	}
	host := u.Hostname()
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return server{}, fmt.Errorf("%q: port %q is out of range 1-65535", spec, p)
		}
		port = p
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return server{}, fmt.Errorf("%q: %q is not an IP address (a resolver's own address cannot be looked up)", spec, host)
	}
	if srv.proto == "tls" && srv.serverName == "" {
		return server{}, fmt.Errorf("%q: tls needs the server's certificate name: tls://IP:PORT#NAME", spec)
	}
	srv.addr = net.JoinHostPort(ip.String(), port)
	srv.loopback = ip.IsLoopback()
	return srv, nil
}
