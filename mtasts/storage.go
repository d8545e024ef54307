package mtasts

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Storage is where a Cache keeps policies across restarts: the part of
// certmagic.Storage that it uses, so that Caddy's storage (ctx.Storage()
// in a module's Provision, the file system by default, or whatever the
// config's "storage" names) can be passed as it is. Load and List must
// return an error satisfying errors.Is(err, fs.ErrNotExist) for a key or
// prefix that does not exist, as certmagic.Storage's do.
type Storage interface {
	Store(ctx context.Context, key string, value []byte) error
	Load(ctx context.Context, key string) ([]byte, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, path string, recursive bool) ([]string, error)
}

// StoragePrefix is the storage key prefix of cached policies: the policy
// of DOMAIN is at StoragePrefix + "/" + DOMAIN + ".json".
const StoragePrefix = "smtp/mta-sts"

func storageKey(domain string) string {
	return StoragePrefix + "/" + domain + ".json"
}

// storedPolicy is the JSON form of a cached policy.
type storedPolicy struct {
	Domain  string    `json:"domain"`
	Version string    `json:"version"`
	Mode    Mode      `json:"mode"`
	MX      []string  `json:"mx,omitempty"`
	MaxAge  int64     `json:"max_age"` // seconds, as in the policy
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
}

func encodePolicy(domain string, p *Policy) ([]byte, error) {
	return json.Marshal(storedPolicy{
		Domain:  domain,
		Version: p.Version,
		Mode:    p.Mode,
		MX:      p.MX,
		MaxAge:  int64(p.MaxAge / time.Second),
		ID:      p.ID,
		Fetched: p.Fetched,
	})
}

// decodePolicy reads a stored policy back, checking it as strictly as a
// fetched one: storage may be shared, or edited by hand.
func decodePolicy(domain string, b []byte) (*Policy, error) {
	var s storedPolicy
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	switch {
	case s.Domain != domain:
		return nil, fmt.Errorf("stored for domain %q", s.Domain)
	case s.Version != "STSv1":
		return nil, fmt.Errorf("version %q", s.Version)
	case s.Mode != ModeEnforce && s.Mode != ModeTesting && s.Mode != ModeNone:
		return nil, fmt.Errorf("mode %q", s.Mode)
	case s.MaxAge < 0 || s.MaxAge > MaxMaxAge:
		return nil, fmt.Errorf("max_age %d", s.MaxAge)
	case !validID(s.ID):
		return nil, fmt.Errorf("id %q", s.ID)
	case s.Fetched.IsZero():
		return nil, fmt.Errorf("no fetch time")
	case len(s.MX) == 0 && s.Mode != ModeNone:
		return nil, fmt.Errorf("no mx in mode %s", s.Mode)
	}
	for _, mx := range s.MX {
		if !validMXPattern(mx) {
			return nil, fmt.Errorf("mx %q", mx)
		}
	}
	return &Policy{
		Version: s.Version,
		Mode:    s.Mode,
		MX:      s.MX,
		MaxAge:  time.Duration(s.MaxAge) * time.Second,
		ID:      s.ID,
		Fetched: s.Fetched,
	}, nil
}
