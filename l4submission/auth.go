package l4submission

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// User is an account that may authenticate with AUTH.
type User struct {
	// Username is the name the client gives. Caddy placeholders such as
	// {env.SMTP_USER} are replaced when the config loads.
	Username string `json:"username"`

	// Password is the hashed password, in the format of `hash` (the
	// output of `caddy hash-password`): in Modular Crypt Format ("$2a$...")
	// or base64-encoded. Caddy placeholders are replaced when the config
	// loads.
	Password string `json:"password"` //nolint:gosec // a hash, not a password
}

// authenticator checks users' passwords with a Caddy hash comparer, as
// Caddy's basic_auth does, through the handler's authThrottle.
type authenticator struct {
	hash  caddyauth.Comparer
	users map[string][]byte
	// fake is compared when the user does not exist, so that an unknown
	// user takes as long as a wrong password: the first user's hash, of the
	// same cost as the others (likely), not the hash module's FakeHash,
	// whose cost may be far higher than the configured hashes' and would
	// both tell unknown users apart and make them expensive.
	fake []byte
	// throttle is shared by the handler's connections (see guard); set by
	// Provision.
	throttle *authThrottle
}

// newAuthenticator loads the hash module and the users.
func newAuthenticator(ctx caddy.Context, h *Handler) (*authenticator, error) {
	if h.HashRaw == nil {
		h.HashRaw = json.RawMessage(`{"algorithm": "bcrypt"}`)
	}
	mod, err := ctx.LoadModule(h, "HashRaw")
	if err != nil {
		return nil, fmt.Errorf("hash: loading the password hash module: %w", err)
	}
	a := &authenticator{users: make(map[string][]byte, len(h.Users))}
	var ok bool
	if a.hash, ok = mod.(caddyauth.Comparer); !ok {
		return nil, fmt.Errorf("hash: module %T cannot compare passwords", mod)
	}
	repl := caddy.NewReplacer()
	for i, u := range h.Users {
		name := repl.ReplaceKnown(u.Username, "")
		pw := repl.ReplaceKnown(u.Password, "")
		if name == "" || pw == "" {
			return nil, fmt.Errorf("users[%d]: username and password are required", i)
		}
		if _, dup := a.users[name]; dup {
			return nil, fmt.Errorf("users[%d]: username %q is not unique", i, name)
		}
		hashed := []byte(pw)
		if !strings.HasPrefix(pw, "$") {
			if hashed, err = base64.StdEncoding.DecodeString(pw); err != nil {
				return nil, fmt.Errorf("users[%d]: password of %q: not in Modular Crypt Format and not base64: %w", i, name, err)
			}
		}
		a.users[name] = hashed
		if a.fake == nil {
			a.fake = hashed
		}
	}
	a.throttle = newAuthThrottle()
	return a, nil
}

// The replies of check besides success.
var (
	errAuthTemporary = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "temporary authentication failure"}
	errAuthBusy = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "too many authentications in progress; try again later"}
)

// errAuthLocked is the reply to AUTH from a client locked out for d.
func errAuthLocked(client netip.Addr, d time.Duration) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("too many failed authentications from %s; try again in %s", client, d.Round(time.Second))}
}

// check returns nil when the password is the user's; smtp.ErrAuthFailed
// (535 5.7.8) when the user is unknown or the password wrong; and 454
// 4.7.0 without comparing anything when the client is locked out (see
// authThrottle) or no hash comparison could start within authHashWait.
// A (user, password) pair that succeeded before is taken from the cache
// without a comparison.
func (a *authenticator) check(client netip.Addr, username, password string) error {
	t := a.throttle
	key := clientKey(client)
	if d := t.lockedFor(key, time.Now()); d > 0 {
		// Slowly, so that a client that goes on cannot make the server
		// spend its CPU on new connections and TLS handshakes instead.
		time.Sleep(authLockedDelay)
		return errAuthLocked(client, d-authLockedDelay)
	}
	ck := t.cacheKey(username, password)
	if t.cached(ck) {
		return nil
	}
	// Concurrent checks of the same credentials from the same client
	// (a program that opens a few connections at once) share one
	// comparison.
	flight := key.String() + "\x00" + string(ck[:])
	v, _, _ := t.flights.Do(flight, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), authHashWait)
		defer cancel()
		slots := hashSlots()
		if err := slots.Acquire(ctx, 1); err != nil {
			return errAuthBusy, nil
		}
		defer slots.Release(1)
		// Checked again: the client may have used up its failures while
		// this one waited for its turn.
		if d := t.lockedFor(key, time.Now()); d > 0 {
			return errAuthLocked(client, d), nil
		}
		t.compares.Add(1)
		return a.compare(username, password), nil
	})
	err, _ := v.(error)
	switch {
	case err == nil:
		t.remember(ck)
	case errors.Is(err, smtp.ErrAuthFailed):
		t.fail(key, time.Now())
	}
	return err
}

// compare compares the password with the user's hash (or the fake one).
func (a *authenticator) compare(username, password string) error {
	hashed, known := a.users[username]
	if !known {
		hashed = a.fake
	}
	same, err := a.hash.Compare(hashed, []byte(password))
	if err != nil {
		return errAuthTemporary
	}
	if !same || !known {
		return smtp.ErrAuthFailed
	}
	return nil
}

// The SASL mechanisms offered.
const (
	mechPlain = "PLAIN"
	mechLogin = "LOGIN"
)

// saslServer returns the server side of a mechanism; auth is called with
// the credentials and returns nil when they are good.
func saslServer(mech string, auth func(username, password string) error) (sasl.Server, error) {
	switch mech {
	case mechPlain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "authorization identity must be the username"}
			}
			return auth(username, password)
		}), nil
	case mechLogin:
		return &loginServer{auth: auth}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): the username and then the password, each
// asked for with a challenge. go-sasl has no server for it, and clients
// such as Outlook still use it.
type loginServer struct {
	auth     func(username, password string) error
	step     int
	username string
}

// Next takes the client's response to the last challenge (nil before the
// first, unless the client sent the username along with AUTH LOGIN).
func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		if response == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(l.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// Interface guards
var _ sasl.Server = (*loginServer)(nil)
