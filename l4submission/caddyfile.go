package l4submission

import (
	"encoding/json"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile sets up the Handler from Caddyfile tokens. Syntax:
//
//	smtp_submission {
//		hostname <name>
//		tls [{
//			connection_policy {
//				...
//			}
//		}]
//		user <username> <hashed_password>
//		hash <algorithm>
//		allow_insecure_auth
//		relay_networks <cidr|ip|private_ranges>...
//		max_message_size <size>
//		max_recipients <n>
//		max_line_length <octets>
//		max_connections <n>
//		max_connections_per_ip <n>
//		read_timeout <duration>
//		write_timeout <duration>
//	}
//
// `tls` without a block offers STARTTLS with the default connection
// policy. `user` and `relay_networks` may be repeated; `private_ranges`
// stands for the private and loopback ranges, as in Caddy's remote_ip
// matcher. `hash` names a module of http.authentication.hashes (bcrypt,
// argon2id). Sizes may have units (25MiB), and durations are Caddy's (5m).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	_, wrapper := d.Next(), d.Val() // consume wrapper name

	// No same-line options are supported
	if d.CountRemainingArgs() > 0 {
		return d.ArgErr()
	}

	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		switch option {
		case "hostname":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Hostname = d.Val()
		case "tls":
			if d.CountRemainingArgs() > 0 {
				return d.ArgErr()
			}
			if err := h.unmarshalTLS(d); err != nil {
				return err
			}
			continue // the block, if any, was read
		case "user":
			var u User
			if !d.Args(&u.Username, &u.Password) {
				return d.ArgErr()
			}
			h.Users = append(h.Users, u)
		case "hash":
			if !d.NextArg() {
				return d.ArgErr()
			}
			algorithm := d.Val()
			if _, err := caddy.GetModule("http.authentication.hashes." + algorithm); err != nil {
				return d.Errf("%s: unknown hash algorithm %q", option, algorithm)
			}
			raw, err := json.Marshal(map[string]string{"algorithm": algorithm})
			if err != nil {
				return d.Errf("%s: %v", option, err)
			}
			h.HashRaw = raw
		case "allow_insecure_auth":
			h.AllowInsecureAuth = true
		case "relay_networks":
			if d.CountRemainingArgs() == 0 {
				return d.ArgErr()
			}
			for d.NextArg() {
				if d.Val() == "private_ranges" {
					h.RelayNetworks = append(h.RelayNetworks, caddyhttp.PrivateRangesCIDR()...)
					continue
				}
				h.RelayNetworks = append(h.RelayNetworks, d.Val())
			}
		case "max_message_size":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(d.Val())
			if err != nil || n > 1<<62 {
				return d.Errf("%s: bad size %q", option, d.Val())
			}
			h.MaxMessageSize = int64(n)
		case "max_recipients", "max_line_length", "max_connections", "max_connections_per_ip":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("%s: bad number %q", option, d.Val())
			}
			*map[string]*int{
				"max_recipients":         &h.MaxRecipients,
				"max_line_length":        &h.MaxLineLength,
				"max_connections":        &h.MaxConnections,
				"max_connections_per_ip": &h.MaxConnectionsPerIP,
			}[option] = n
		case "read_timeout", "write_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("%s: bad duration %q: %v", option, d.Val(), err)
			}
			*map[string]*caddy.Duration{
				"read_timeout":  &h.ReadTimeout,
				"write_timeout": &h.WriteTimeout,
			}[option] = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized %s option '%s'", wrapper, option)
		}

		if d.NextArg() {
			return d.ArgErr()
		}
		// No nested blocks are supported but for tls's
		if d.NextBlock(nesting + 1) {
			return d.Errf("malformed %s option '%s': blocks are not supported", wrapper, option)
		}
	}
	return nil
}

// unmarshalTLS reads `tls` and its optional block of connection policies.
func (h *Handler) unmarshalTLS(d *caddyfile.Dispenser) error {
	h.TLS = new(TLS)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "connection_policy" {
			return d.Errf("unrecognized tls option '%s'", d.Val())
		}
		cp := new(caddytls.ConnectionPolicy)
		if err := cp.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
			return err
		}
		h.TLS.ConnectionPolicies = append(h.TLS.ConnectionPolicies, cp)
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
