// Package queuepage is the HTTP handler `http.handlers.smtp_queue`: a small
// web page for the smtp app's queue (the summary by destination with the
// last errors, the messages with filters, a message's detail, the actions
// and the hold rules), for Caddy's own routes. The page is HTML, CSS and a
// little JavaScript embedded in the binary, with no build step; it calls
// the same API as the admin endpoint (package queueapi) under its own path
// (api/). It authenticates nobody: put it behind basic_auth (or
// forward_auth) on a site only administrators reach.
//
//	http://127.0.0.1:8025 {
//		handle_path /queue/* {
//			basic_auth {
//				admin $2a$14$...
//			}
//			smtp_queue
//		}
//	}
package queuepage

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queueapi"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("smtp_queue", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("smtp_queue", httpcaddyfile.Before, "respond")
}

//go:embed static
var static embed.FS

// Handler serves the queue page and its API.
type Handler struct {
	app queueHolder
}

type queueHolder interface {
	QueueRunning() *queue.Queue
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smtp_queue",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision finds the smtp app.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("smtp")
	if err != nil {
		return fmt.Errorf("getting the smtp app: %w", err)
	}
	holder, ok := app.(queueHolder)
	if !ok {
		return fmt.Errorf("the smtp app (%T) has no queue", app)
	}
	h.app = holder
	return nil
}

// ServeHTTP serves the page (and its files) and, under api/, the queue's
// API. The request's path is taken from its last part: the page is at
// any path ending in "/", its API at ".../api/...".
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	path := r.URL.Path
	if i := strings.LastIndex(path, "/api/"); i >= 0 || strings.HasSuffix(path, "/api") {
		rest := ""
		if i >= 0 {
			rest = path[i+len("/api/"):]
		}
		return h.serveAPI(w, r, rest)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("the page is read with GET"))
	}
	file := path[strings.LastIndex(path, "/")+1:]
	if file == "" {
		file = "index.html"
	}
	if !strings.Contains(path, "/") || (file == "index.html" && !strings.HasSuffix(path, "/")) {
		http.Redirect(w, r, path+"/", http.StatusFound)
		return nil
	}
	sub, _ := fs.Sub(static, "static")
	if _, err := fs.Stat(sub, file); err != nil {
		return caddyhttp.Error(http.StatusNotFound, err)
	}
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	http.ServeFileFS(w, r, sub, file)
	return nil
}

// serveAPI answers the page's API calls. A call that changes something
// must carry the header Smtp-Queue-Request (which a page of another site
// cannot send without the browser asking this server first) and, when the
// browser says where it comes from, come from this site: basic_auth's
// credentials, which the browser sends by itself, cannot be used by
// another site to act on the queue.
func (h *Handler) serveAPI(w http.ResponseWriter, r *http.Request, rest string) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if r.Header.Get("Smtp-Queue-Request") == "" {
			return writeError(w, http.StatusForbidden, "a request that changes the queue needs the Smtp-Queue-Request header")
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			u, err := url.Parse(origin)
			if err != nil || u.Host != r.Host {
				return writeError(w, http.StatusForbidden, "a request from another site")
			}
		}
	}
	q := h.app.QueueRunning()
	if q == nil {
		return writeError(w, http.StatusServiceUnavailable, "the queue is not running")
	}
	err := queueapi.Serve(w, r, q, rest)
	var e *queueapi.Error
	if errors.As(err, &e) {
		return writeError(w, e.Status, e.Msg)
	}
	return err
}

func writeError(w http.ResponseWriter, status int, msg string) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err := fmt.Fprintf(w, "{\"error\": %q}\n", msg)
	return err
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile reads `smtp_queue`, which takes no options.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("smtp_queue takes no options")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
