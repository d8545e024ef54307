package pgstore

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

func init() {
	caddy.RegisterModule(Module{})
}

// Module is the PostgreSQL store as a Caddy module,
// smtp.queue.stores.postgres: one queue shared by every Caddy instance
// that names the same database.
type Module struct {
	// URL is the database's connection URL
	// (postgres://user:password@host:port/database?sslmode=...). Caddy
	// placeholders are replaced when the config loads, so that the
	// password need not be in the config: "{env.SMTP_QUEUE_URL}".
	// Required.
	URL string `json:"url,omitempty"`

	// Instance names this instance in the leases it holds (the admin API
	// shows which instance holds a message). Default: the host name and
	// the process ID.
	Instance string `json:"instance,omitempty"`

	url string
}

// CaddyModule returns the Caddy module information.
func (Module) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.queue.stores.postgres",
		New: func() caddy.Module { return new(Module) },
	}
}

// Provision resolves the URL's placeholders and checks it.
func (m *Module) Provision(caddy.Context) error {
	if m.URL == "" {
		return fmt.Errorf("url: required (postgres://user:password@host/database)")
	}
	u, err := caddy.NewReplacer().ReplaceOrErr(m.URL, true, true)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	parsed, err := url.Parse(u)
	if err != nil || (parsed.Scheme != "postgres" && parsed.Scheme != "postgresql") {
		return fmt.Errorf("url: not a postgres:// URL")
	}
	m.url = u
	if m.Instance == "" {
		host, _ := os.Hostname()
		m.Instance = host + "-" + strconv.Itoa(os.Getpid())
	}
	return nil
}

// StoreKey names the store by its database (without the password).
func (m *Module) StoreKey() string {
	u, err := url.Parse(m.url)
	if err != nil {
		return "postgres:" + m.url
	}
	u.User = url.User(u.User.Username())
	return "postgres:" + u.String()
}

// OpenStore connects to the database.
func (m *Module) OpenStore(ctx context.Context, log *zap.Logger) (queue.Store, error) {
	return Open(ctx, m.url, m.Instance, log)
}

// UnmarshalCaddyfile reads
//
//	store postgres [<url>] {
//		url <url>
//		instance <name>
//	}
func (m *Module) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if d.NextArg() {
		m.URL = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "url":
			if !d.AllArgs(&m.URL) {
				return d.ArgErr()
			}
		case "instance":
			if !d.AllArgs(&m.Instance) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown postgres store option %q (known: url, instance)", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ queue.StoreModule     = (*Module)(nil)
	_ caddy.Provisioner     = (*Module)(nil)
	_ caddyfile.Unmarshaler = (*Module)(nil)
)
