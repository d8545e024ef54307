package httpsend

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("smtp_send", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("smtp_send", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler:
//
//	smtp_send [<matcher>] {
//		mode           queue|deliver
//		max_size       <size>
//		max_recipients <n>
//		max_concurrent <n>
//	}
//
// where size is in bytes or with a unit (10MB, 25MiB).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_size":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(s)
			if err != nil {
				return d.Errf("max_size %q: %v", s, err)
			}
			h.MaxSize = int64(n)
		case "mode":
			var m string
			if !d.AllArgs(&m) {
				return d.ArgErr()
			}
			if m != ModeQueue && m != ModeDeliver {
				return d.Errf("mode %q: want queue or deliver", m)
			}
			h.Mode = m
		case "max_recipients":
			n, err := positiveInt(d)
			if err != nil {
				return err
			}
			h.MaxRecipients = n
		case "max_concurrent":
			n, err := positiveInt(d)
			if err != nil {
				return err
			}
			h.MaxConcurrent = n
		default:
			return d.Errf("unknown smtp_send option %q (known: mode, max_size, max_recipients, max_concurrent)", d.Val())
		}
	}
	return nil
}

// positiveInt reads the one argument of the option d is on, a whole
// number above 0.
func positiveInt(d *caddyfile.Dispenser) (int, error) {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, d.Errf("%s %q: want a whole number above 0", option, s)
	}
	return n, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
