package l4submission

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/emersion/go-smtp"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// smtpApp is what the handler needs of the smtp app: its queue and its
// name.
type smtpApp interface {
	delivery.Queuer
	DefaultHostname() string
}

// Handler is a layer4 connection handler that receives mail over SMTP and
// puts each message in the `smtp` app's queue, answering the client once
// the queue has it on stable storage (see the package documentation).
//
// Clients may relay only when they authenticated against Users or connect
// from RelayNetworks; one of the two must be configured.
type Handler struct {
	// Hostname is the name the handler greets clients with (in the 220
	// greeting and the EHLO reply) and writes in the Received header it
	// adds. Caddy placeholders such as {env.SMTP_HOSTNAME} are replaced when
	// the config loads. Default: the smtp app's hostname when it is a plain
	// value, else the machine's host name.
	Hostname string `json:"hostname,omitempty"`

	// TLS enables STARTTLS with certificates from Caddy's tls app. Without
	// it, STARTTLS is not offered.
	TLS *TLS `json:"tls,omitempty"`

	// Users may authenticate with AUTH PLAIN or AUTH LOGIN, and then relay
	// from any address. Passwords are hashed as for Caddy's basic_auth
	// (the output of `caddy hash-password`).
	Users []User `json:"users,omitempty"`

	// HashRaw is the algorithm the users' passwords are hashed with, a
	// module of Caddy's http.authentication.hashes namespace:
	// {"algorithm": "bcrypt"} or {"algorithm": "argon2id"}. Default: bcrypt.
	HashRaw json.RawMessage `json:"hash,omitempty" caddy:"namespace=http.authentication.hashes inline_key=algorithm"`

	// AllowInsecureAuth offers AUTH on connections without TLS, so that
	// passwords cross the network in the clear. Only for a network you
	// control. Default: false: AUTH is offered only after STARTTLS.
	AllowInsecureAuth bool `json:"allow_insecure_auth,omitempty"`

	// RelayNetworks are the client addresses that may relay without
	// authenticating: CIDR ranges ("10.0.0.0/8") or single addresses. It is
	// checked at MAIL against the client's address. A range shorter than
	// /8 (IPv4) or /32 (IPv6, unless within the unique local fc00::/7),
	// such as 0.0.0.0/0 or ::/0, is refused: it would make an open relay.
	// Default: none.
	RelayNetworks []string `json:"relay_networks,omitempty"`

	// MaxMessageSize is the largest message accepted, in bytes: it is
	// announced in EHLO (SIZE), a larger SIZE= at MAIL is refused, and a
	// message that grows past it is refused with 552. Default: 26214400
	// (25 MiB).
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// MaxRecipients is the most recipients one message may have; RCPT
	// beyond it gets 452, which clients answer by sending the rest in
	// another transaction. Default: 100, the minimum RFC 5321 (4.5.3.1.8)
	// asks servers to accept.
	MaxRecipients int `json:"max_recipients,omitempty"`

	// MaxLineLength is the longest line a message may have, in octets
	// without the CR LF that ends it; a message with a longer line is
	// refused for good, with 554 5.6.0, over DATA and BDAT alike. Command
	// lines may be up to twice as long, and at least 2000 octets long.
	// Default: 998, the limit of RFC 5322 (2.1.1); some senders exceed it.
	MaxLineLength int `json:"max_line_length,omitempty"`

	// MaxConnections is the most connections the handler serves at once;
	// past it, a new client gets 421 4.7.0 and is disconnected at once.
	// Default: 1000.
	MaxConnections int `json:"max_connections,omitempty"`

	// MaxConnectionsPerIP is the most connections one client may have open
	// at once, counted by its IPv4 address or by the /64 its IPv6 address
	// is in; past it, the client gets 421 4.7.0 and is disconnected at
	// once. Clients in relay_networks are exempt, as Postfix exempts
	// mynetworks, and so are clients without an IP address (on a unix
	// socket). Default: 50, Postfix's
	// smtpd_client_connection_count_limit.
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`

	// ReadTimeout bounds the wait for each command, and for the whole of a
	// message sent with DATA or of one BDAT chunk. Default: 5m, RFC 5321's
	// server timeout (4.5.3.2.7).
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`

	// WriteTimeout bounds the sending of each reply. Default: 1m.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	ctx       caddy.Context
	logger    *zap.Logger
	app       smtpApp
	tlsConfig *tls.Config
	auth      *authenticator
	relay     []netip.Prefix
	guard     *guard
	guardKey  string
}

// TLS is the STARTTLS setup.
type TLS struct {
	// ConnectionPolicies choose the certificate and TLS settings from the
	// client's ClientHello, as in Caddy's tls app and layer4's tls
	// handler. The certificates come from the tls app: load them
	// (certificates.load_files, load_pem) or have it obtain them
	// (certificates.automate). A policy without default_sni gets Hostname
	// as its default_sni, since mail clients seldom send SNI, and a policy
	// without alpn offers none (Caddy's default, h2 and http/1.1, is for
	// HTTP). Default: one policy that serves the tls app's certificate for
	// the client's SNI, else for the connection's local address, else for
	// Hostname.
	ConnectionPolicies caddytls.ConnectionPolicies `json:"connection_policies,omitempty"`
}

// The defaults Provision sets; the field comments explain each choice.
const (
	defaultMaxMessageSize = 25 << 20
	defaultMaxRecipients  = 100
	defaultReadTimeout    = 5 * time.Minute
	defaultWriteTimeout   = time.Minute
	defaultMaxLineLength  = 998
	defaultMaxConnections = 1000
	defaultMaxConnsPerIP  = 50
	// minCommandLine is go-smtp's default limit on a line, CR LF
	// included, kept as the least for command lines (RFC 5321 4.5.3.1.4
	// asks for 512, more with extensions).
	minCommandLine = 2000
)

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.smtp_submission",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets the defaults, takes the smtp app, and sets up TLS, the
// users, the relay networks and the limits.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.ctx = ctx
	h.logger = ctx.Logger(h)
	// The config as it was loaded names the guard, before Provision
	// changes it.
	key, err := guardKey(h)
	if err != nil {
		return err
	}

	if err := h.checkRelayPolicy(); err != nil {
		return err
	}
	appIface, err := ctx.App("smtp")
	if err != nil {
		return fmt.Errorf("getting the smtp app: %w", err)
	}
	sender, ok := appIface.(smtpApp)
	if !ok {
		return fmt.Errorf("the smtp app (%T) has no queue", appIface)
	}
	h.app = sender

	if err := h.setDefaults(); err != nil {
		return err
	}
	if h.relay, err = parseNetworks(h.RelayNetworks); err != nil {
		return fmt.Errorf("relay_networks: %w", err)
	}
	if len(h.Users) > 0 {
		if h.auth, err = newAuthenticator(ctx, h); err != nil {
			return err
		}
	}
	if h.TLS != nil {
		if err := h.provisionTLS(ctx); err != nil {
			return err
		}
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	if h.guard, err = loadGuard(key, h.MaxConnections, h.MaxConnectionsPerIP); err != nil {
		return err
	}
	h.guardKey = key
	if h.auth != nil {
		h.auth.throttle = h.guard.auth
	}
	return nil
}

// Cleanup gives back the handler's guard.
func (h *Handler) Cleanup() error {
	if h.guardKey != "" {
		_, _ = guards.Delete(h.guardKey)
	}
	return nil
}

// checkRelayPolicy refuses a config that would make an open relay, and
// users that could never authenticate.
func (h *Handler) checkRelayPolicy() error {
	if len(h.Users) == 0 && len(h.RelayNetworks) == 0 {
		return errors.New("neither users nor relay_networks is set: that would make an open relay, " +
			"which spammers find and use within hours; set users (clients then authenticate with AUTH) " +
			"or relay_networks (the client addresses that may relay without authenticating), " +
			"for example \"relay_networks\": [\"127.0.0.1/32\", \"::1/128\"]")
	}
	if len(h.Users) > 0 && h.TLS == nil && !h.AllowInsecureAuth {
		return errors.New("users: AUTH is offered only after STARTTLS, and tls is not set: " +
			"set tls (with a certificate in the tls app), or allow_insecure_auth on a network you control")
	}
	return nil
}

func (h *Handler) setDefaults() error {
	repl := caddy.NewReplacer()
	if h.Hostname == "" {
		h.Hostname = h.app.DefaultHostname()
	}
	hostname, err := repl.ReplaceOrErr(h.Hostname, true, true)
	if err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	h.Hostname = hostname
	if h.MaxMessageSize < 0 {
		return fmt.Errorf("max_message_size: %d is negative", h.MaxMessageSize)
	}
	if h.MaxMessageSize == 0 {
		h.MaxMessageSize = defaultMaxMessageSize
	}
	if h.MaxRecipients < 0 {
		return fmt.Errorf("max_recipients: %d is negative", h.MaxRecipients)
	}
	if h.MaxRecipients == 0 {
		h.MaxRecipients = defaultMaxRecipients
	}
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{
		{"max_line_length", &h.MaxLineLength, defaultMaxLineLength},
		{"max_connections", &h.MaxConnections, defaultMaxConnections},
		{"max_connections_per_ip", &h.MaxConnectionsPerIP, defaultMaxConnsPerIP},
	} {
		if *n.v < 0 {
			return fmt.Errorf("%s: %d is negative", n.name, *n.v)
		}
		if *n.v == 0 {
			*n.v = n.def
		}
	}
	for _, d := range []struct {
		name string
		v    *caddy.Duration
		def  time.Duration
	}{
		{"read_timeout", &h.ReadTimeout, defaultReadTimeout},
		{"write_timeout", &h.WriteTimeout, defaultWriteTimeout},
	} {
		if *d.v < 0 {
			return fmt.Errorf("%s: %v is negative", d.name, time.Duration(*d.v))
		}
		if *d.v == 0 {
			*d.v = caddy.Duration(d.def)
		}
	}
	return nil
}

// provisionTLS sets up the connection policies and builds the TLS config
// that STARTTLS uses.
func (h *Handler) provisionTLS(ctx caddy.Context) error {
	if len(h.TLS.ConnectionPolicies) == 0 {
		h.TLS.ConnectionPolicies = caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)}
	}
	for _, p := range h.TLS.ConnectionPolicies {
		if p.DefaultSNI == "" {
			p.DefaultSNI = h.Hostname
		}
		if p.ALPN == nil {
			// Not Caddy's default (h2, http/1.1): a client that offers
			// other protocols would fail the handshake.
			p.ALPN = []string{}
		}
	}
	if err := h.TLS.ConnectionPolicies.Provision(ctx); err != nil {
		return fmt.Errorf("tls: setting up connection policies: %w", err)
	}
	h.tlsConfig = h.TLS.ConnectionPolicies.TLSConfig(ctx)
	return nil
}

// Handle serves one SMTP connection until the client quits or the
// connection ends. It is a terminal handler: next is not called.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	client := remoteAddr(cx.RemoteAddr())
	// A client without an IP address (on a unix socket) is not counted
	// per address: all would count as one.
	exempt := !client.IsValid() || inNetworks(h.relay, client)
	release, refused := h.guard.admit(client, exempt)
	if refused != "" {
		h.refuse(cx, client, refused)
		return nil
	}
	defer release()

	conn := newSessionConn(cx)
	cs := newConnState(h, conn)
	srv := h.newServer(cs)

	// When Caddy stops, end the session at its next command (421). When
	// the config is only replaced (a reload: a new config is active by
	// then), the session goes on: its deliveries in flight finish, and the
	// next ones go through the new config's smtp app.
	stop := context.AfterFunc(h.ctx, func() {
		if caddy.ActiveContext().Context == nil {
			conn.drain()
		}
	})
	defer stop()

	err := srv.Serve(newOneConnListener(conn))
	// Serve returns once the connection is closed; Shutdown waits for the
	// goroutine that served it.
	_ = srv.Shutdown(context.Background())
	h.logSession(cs)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serving smtp: %w", err)
	}
	return nil
}

// refuse answers a client that would pass a connection limit with 421
// and disconnects it, before go-smtp reads anything.
func (h *Handler) refuse(cx net.Conn, client netip.Addr, limit string) {
	metricConnRefused(limit)
	msg := "too many connections; try again later"
	if limit == refusedPerClient {
		msg = fmt.Sprintf("too many connections from %s; try again later", client)
	}
	_ = cx.SetWriteDeadline(time.Now().Add(time.Duration(h.WriteTimeout)))
	_, _ = fmt.Fprintf(cx, "421 4.7.0 %s %s\r\n", h.Hostname, msg)
	_ = cx.Close()
	h.logger.Info("smtp connection refused",
		zap.String("remote", client.String()), zap.String("limit", limit))
}

// newServer makes the go-smtp server for one connection.
func (h *Handler) newServer(cs *connState) *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s, err := newSession(h, cs, c)
		if err != nil {
			return nil, err
		}
		return s, nil
	}))
	srv.Domain = h.Hostname
	srv.TLSConfig = h.tlsConfig
	srv.MaxMessageBytes = h.MaxMessageSize
	srv.MaxRecipients = h.MaxRecipients
	// go-smtp's limit applies to command lines and to the lines of DATA,
	// CR LF included; past it, go-smtp's reader drops what it read, so
	// that the session cannot tell which line it was. It is kept well
	// above max_line_length, which the session checks, so that a line a
	// little too long is refused with its number.
	srv.MaxLineLength = max(minCommandLine, 2*(h.MaxLineLength+2))
	srv.AllowInsecureAuth = h.AllowInsecureAuth
	srv.ReadTimeout = time.Duration(h.ReadTimeout)
	srv.WriteTimeout = time.Duration(h.WriteTimeout)
	srv.EnableSMTPUTF8 = true
	srv.EnableREQUIRETLS = true
	srv.EnableDSN = true
	srv.ErrorLog = errorLog{h.logger}
	return srv
}

// logSession writes the one log line of a connection.
func (h *Handler) logSession(cs *connState) {
	s := cs.snapshot()
	metricSession()
	h.logger.Info("smtp session",
		zap.String("remote", cs.remote.String()),
		zap.String("helo", s.helo),
		zap.String("tls", s.tls),
		zap.String("user", s.user),
		zap.Bool("relay_network", cs.inRelayNetworks),
		zap.Int("queued", s.queued),
		zap.Int("deferred", s.deferred),
		zap.Int("refused", s.refused),
		zap.Int("relay_denied", s.relayDenied),
		zap.Int("auth_failures", s.authFailures),
		zap.Int64("bytes", s.bytes),
		zap.Duration("duration", time.Since(cs.start)),
		zap.NamedError("read_error", cs.conn.readError()),
	)
}

// errorLog routes go-smtp's internal error log to zap: a panic as an
// error, the rest (a client's broken connection, a failed handshake) at
// debug level, since the session's own line says how it ended.
type errorLog struct{ l *zap.Logger }

func (e errorLog) Printf(format string, v ...any) { e.log(fmt.Sprintf(format, v...)) }
func (e errorLog) Println(v ...any)               { e.log(fmt.Sprintln(v...)) }

func (e errorLog) log(msg string) {
	if strings.HasPrefix(msg, "panic") {
		e.l.Error("smtp server", zap.String("error", msg))
		return
	}
	e.l.Debug("smtp server", zap.String("error", msg))
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
	_ layer4.NextHandler = (*Handler)(nil)
	_ smtp.Logger        = errorLog{}
)
