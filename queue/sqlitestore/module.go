package sqlitestore

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

func init() {
	caddy.RegisterModule(Module{})
}

// Module is the embedded store as a Caddy module, smtp.queue.stores.sqlite:
// the default store of the smtp app's queue.
type Module struct {
	// Path is the folder of the queue (the database, and the bodies of
	// large messages). Default: smtp/queue in Caddy's data directory.
	Path string `json:"path,omitempty"`

	// MinFree is the free space, in bytes, kept on the queue's file
	// system: below it, new messages are refused for now, so that the
	// deliveries under way can still record their results (and free
	// space). Default: 64 MiB.
	MinFree int64 `json:"min_free,omitempty"`
}

// DefaultMinFree is the default of MinFree.
const DefaultMinFree = 64 << 20

// CaddyModule returns the Caddy module information.
func (Module) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.queue.stores.sqlite",
		New: func() caddy.Module { return new(Module) },
	}
}

// Provision sets the defaults.
func (m *Module) Provision(caddy.Context) error {
	if m.Path == "" {
		m.Path = filepath.Join(caddy.AppDataDir(), "smtp", "queue")
	}
	if m.MinFree == 0 {
		m.MinFree = DefaultMinFree
	}
	if m.MinFree < 0 {
		return fmt.Errorf("min_free: %d is negative", m.MinFree)
	}
	return nil
}

// StoreKey names the store by its folder.
func (m *Module) StoreKey() string { return "sqlite:" + filepath.Clean(m.Path) }

// OpenStore opens the store.
func (m *Module) OpenStore(context.Context, *zap.Logger) (queue.Store, error) {
	s, err := Open(m.Path, Options{MinFree: m.MinFree})
	if err != nil {
		return nil, fmt.Errorf("path %s: %w", m.Path, err)
	}
	return s, nil
}

// UnmarshalCaddyfile reads
//
//	store sqlite {
//		path <folder>
//		min_free <size>
//	}
func (m *Module) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "path":
			if !d.AllArgs(&m.Path) {
				return d.ArgErr()
			}
		case "min_free":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(s)
			if err != nil || n > 1<<62 {
				return d.Errf("min_free %q: not a size (such as 64MB)", s)
			}
			m.MinFree = int64(n)
		default:
			return d.Errf("unknown sqlite store option %q (known: path, min_free)", d.Val())
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
