package dkim

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// RSABits is the size of the RSA keys this package makes (RFC 8301,
// section 3.2: at least 1024, 2048 advised).
const RSABits = 2048

// minRSABits is the smallest RSA key accepted from a file (RFC 8301,
// section 3.2: verifiers must not accept smaller keys).
const minRSABits = 1024

// Key is a DKIM private key of a (domain, selector).
type Key struct {
	Domain    string
	Selector  string
	Algorithm Algorithm
	// Signer is *rsa.PrivateKey or ed25519.PrivateKey.
	Signer crypto.Signer
	// Created is when the key was made, zero for a key from a file.
	Created time.Time
	// File is the PEM file the key came from, "" for a key from storage.
	File string

	pub string // the p= value
}

// PublicKey returns the p= value of the key's record: the base64 of the
// DER SubjectPublicKeyInfo for RSA (as opendkim-genkey and every verifier
// read it), of the 32-byte public key for Ed25519 (RFC 8463, section 4.2).
func (k *Key) PublicKey() string { return k.pub }

// Name returns the name of the key's record: SELECTOR._domainkey.DOMAIN.,
// with the final dot.
func (k *Key) Name() string { return k.Selector + "._domainkey." + k.Domain + "." }

// KeySpec names a key and how to get it.
type KeySpec struct {
	Domain, Selector string
	// Algorithm is the key's algorithm; for a key file, "" takes the
	// file's.
	Algorithm Algorithm
	// File is a PEM file holding the key; "" keeps it in storage.
	File string
}

// Keys gives the keys of (domain, selector): read from a PEM file, or
// from Caddy's storage, or made on first use and kept there. Keys are
// cached in memory. It is safe for concurrent use, and instances of Keys
// over one storage (several Caddy instances) make one key, not two: a key
// is made under the storage's lock, after looking again for one made by
// another instance while waiting for the lock.
type Keys struct {
	storage certmagic.Storage
	log     *zap.Logger
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]*Key // by domain "/" selector, or "file:" path
}

// NewKeys returns keys kept in storage (ctx.Storage() in Caddy).
// logger may be nil.
func NewKeys(storage certmagic.Storage, logger *zap.Logger) *Keys {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Keys{storage: storage, log: logger, now: time.Now, cache: map[string]*Key{}}
}

// storageDir returns the storage folder of a key.
func storageDir(domain, selector string) string {
	return "smtp/dkim/" + domain + "/" + selector
}

// keyLockName is the storage lock taken to make a key. certmagic's
// FileStorage keeps only [\w@.-] of a lock name, so "/" would vanish and
// let two keys share a lock; "_" is in neither a domain nor a selector.
func keyLockName(domain, selector string) string {
	return "smtp_dkim_" + domain + "_" + selector
}

// keyMeta is key.json, beside key.pem: what the key is, for people and
// tools reading the storage.
type keyMeta struct {
	Domain    string    `json:"domain"`
	Selector  string    `json:"selector"`
	Algorithm Algorithm `json:"algorithm"`
	Created   time.Time `json:"created"`
	PublicKey string    `json:"public_key"`
}

// Get returns the key of spec: from spec.File, else from storage, else a
// new one, made and stored under the storage lock.
func (ks *Keys) Get(ctx context.Context, spec KeySpec) (*Key, error) {
	if spec.File != "" {
		return ks.fromFile(spec)
	}
	if err := checkSelector(spec.Selector); err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: selector: %w", spec.Domain, spec.Selector, err)
	}
	if spec.Algorithm != RSASHA256 && spec.Algorithm != Ed25519SHA256 {
		return nil, fmt.Errorf("dkim key %s/%s: algorithm %q: want rsa-sha256 or ed25519-sha256", spec.Domain, spec.Selector, spec.Algorithm)
	}
	id := spec.Domain + "/" + spec.Selector
	ks.mu.Lock()
	k := ks.cache[id]
	ks.mu.Unlock()
	if k != nil {
		return k, checkAlgorithm(k, spec.Algorithm)
	}

	// Without the lock first: the key is usually there.
	k, err := ks.load(ctx, spec.Domain, spec.Selector)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// A key being written by another instance cannot be seen half
		// written (storages write atomically), so this is a real error;
		// look again under the lock before giving up.
		ks.log.Debug("loading dkim key", zap.String("key", id), zap.Error(err))
	}
	if err != nil {
		if k, err = ks.make(ctx, spec); err != nil {
			return nil, err
		}
	}
	ks.mu.Lock()
	if c := ks.cache[id]; c != nil {
		k = c
	} else {
		ks.cache[id] = k
	}
	ks.mu.Unlock()
	return k, checkAlgorithm(k, spec.Algorithm)
}

// Load returns the key of (domain, selector) if storage has it, or an
// error wrapping fs.ErrNotExist; it never makes one.
func (ks *Keys) Load(ctx context.Context, domain, selector string) (*Key, error) {
	id := domain + "/" + selector
	ks.mu.Lock()
	k := ks.cache[id]
	ks.mu.Unlock()
	if k != nil {
		return k, nil
	}
	return ks.load(ctx, domain, selector)
}

func checkAlgorithm(k *Key, want Algorithm) error {
	if want != "" && k.Algorithm != want {
		where := "storage " + storageDir(k.Domain, k.Selector)
		if k.File != "" {
			where = k.File
		}
		return fmt.Errorf("dkim key %s/%s: %s holds an %s key, the config says %s (choose another selector)",
			k.Domain, k.Selector, where, k.Algorithm, want)
	}
	return nil
}

// make makes the key under the storage lock, unless another instance made
// it first.
func (ks *Keys) make(ctx context.Context, spec KeySpec) (*Key, error) {
	lock := keyLockName(spec.Domain, spec.Selector)
	if err := ks.storage.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: taking storage lock: %w", spec.Domain, spec.Selector, err)
	}
	defer func() {
		if err := ks.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			ks.log.Error("releasing dkim key lock", zap.String("lock", lock), zap.Error(err))
		}
	}()
	k, err := ks.load(ctx, spec.Domain, spec.Selector)
	if err == nil {
		return k, nil // made by another instance while we waited
	}
	if !errors.Is(err, fs.ErrNotExist) {
		// Never replace a key that exists but cannot be read: its record
		// may be published, and mail signed with it in flight.
		return nil, err
	}
	var signer crypto.Signer
	switch spec.Algorithm {
	case Ed25519SHA256:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("dkim key %s/%s: %w", spec.Domain, spec.Selector, err)
		}
		signer = priv
	default:
		priv, err := rsa.GenerateKey(rand.Reader, RSABits)
		if err != nil {
			return nil, fmt.Errorf("dkim key %s/%s: %w", spec.Domain, spec.Selector, err)
		}
		signer = priv
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: %w", spec.Domain, spec.Selector, err)
	}
	k = &Key{Domain: spec.Domain, Selector: spec.Selector, Algorithm: spec.Algorithm, Signer: signer,
		Created: ks.now().UTC().Truncate(time.Second)}
	if k.pub, err = publicKey(signer); err != nil {
		return nil, err
	}
	meta, err := json.MarshalIndent(keyMeta{Domain: k.Domain, Selector: k.Selector, Algorithm: k.Algorithm,
		Created: k.Created, PublicKey: k.pub}, "", "\t")
	if err != nil {
		return nil, err
	}
	dir := storageDir(spec.Domain, spec.Selector)
	// key.json first: key.pem is what says the key exists.
	if err := ks.storage.Store(ctx, dir+"/key.json", meta); err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: storing %s/key.json: %w", spec.Domain, spec.Selector, dir, err)
	}
	if err := ks.storage.Store(ctx, dir+"/key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: storing %s/key.pem: %w", spec.Domain, spec.Selector, dir, err)
	}
	ks.log.Info("made dkim key", zap.String("domain", k.Domain), zap.String("selector", k.Selector),
		zap.String("algorithm", string(k.Algorithm)), zap.String("storage", dir))
	return k, nil
}

// load reads a key from storage; an absent key is an error wrapping
// fs.ErrNotExist.
func (ks *Keys) load(ctx context.Context, domain, selector string) (*Key, error) {
	dir := storageDir(domain, selector)
	data, err := ks.storage.Load(ctx, dir+"/key.pem")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("dkim key %s/%s: %w", domain, selector, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("dkim key %s/%s: loading %s/key.pem: %w", domain, selector, dir, err)
	}
	signer, alg, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: storage %s/key.pem: %w", domain, selector, dir, err)
	}
	k := &Key{Domain: domain, Selector: selector, Algorithm: alg, Signer: signer}
	if k.pub, err = publicKey(signer); err != nil {
		return nil, err
	}
	if meta, err := ks.storage.Load(ctx, dir+"/key.json"); err == nil {
		var m keyMeta
		if json.Unmarshal(meta, &m) == nil {
			k.Created = m.Created
		}
	}
	return k, nil
}

// fromFile reads a key from a PEM file.
func (ks *Keys) fromFile(spec KeySpec) (*Key, error) {
	id := "file:" + spec.File
	ks.mu.Lock()
	c := ks.cache[id]
	ks.mu.Unlock()
	if c != nil && c.Domain == spec.Domain && c.Selector == spec.Selector {
		return c, checkAlgorithm(c, spec.Algorithm)
	}
	data, err := os.ReadFile(spec.File)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: key: %w", spec.Domain, spec.Selector, err)
	}
	signer, alg, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("dkim key %s/%s: key %s: %w", spec.Domain, spec.Selector, spec.File, err)
	}
	k := &Key{Domain: spec.Domain, Selector: spec.Selector, Algorithm: alg, Signer: signer, File: spec.File}
	if k.pub, err = publicKey(signer); err != nil {
		return nil, err
	}
	if err := checkAlgorithm(k, spec.Algorithm); err != nil {
		return nil, err
	}
	ks.mu.Lock()
	ks.cache[id] = k
	ks.mu.Unlock()
	return k, nil
}

// parseKey reads the first private key of a PEM text.
func parseKey(data []byte) (crypto.Signer, Algorithm, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, "", errors.New("no PEM private key (want PRIVATE KEY or RSA PRIVATE KEY)")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			if k.N.BitLen() < minRSABits {
				return nil, "", fmt.Errorf("RSA key of %d bits: at least %d needed (RFC 8301)", k.N.BitLen(), minRSABits)
			}
			return k, RSASHA256, nil
		case ed25519.PrivateKey:
			return k, Ed25519SHA256, nil
		default:
			return nil, "", fmt.Errorf("%T key: want RSA or Ed25519", key)
		}
	}
}

// publicKey returns the p= value for a private key.
func publicKey(s crypto.Signer) (string, error) {
	switch pub := s.Public().(type) {
	case ed25519.PublicKey:
		return base64.StdEncoding.EncodeToString(pub), nil
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(der), nil
	default:
		return "", fmt.Errorf("dkim: %T key: want RSA or Ed25519", pub)
	}
}
