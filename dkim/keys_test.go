package dkim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeysOneKeyAcrossInstances: two Keys over the same storage folder
// (two Caddy instances), each asked by several goroutines at once for a
// key that does not exist yet, make one key between them.
func TestKeysOneKeyAcrossInstances(t *testing.T) {
	for _, alg := range []Algorithm{RSASHA256, Ed25519SHA256} {
		t.Run(string(alg), func(t *testing.T) {
			dir := t.TempDir()
			instances := []*Keys{
				NewKeys(&certmagic.FileStorage{Path: dir}, testLogger(t)),
				NewKeys(&certmagic.FileStorage{Path: dir}, testLogger(t)),
			}
			var wg sync.WaitGroup
			pubs := make([]string, 8)
			errs := make([]error, len(pubs))
			start := make(chan struct{})
			for i := range pubs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					k, err := instances[i%2].Get(context.Background(), KeySpec{Domain: "example.org", Selector: "s1", Algorithm: alg})
					errs[i] = err
					if err == nil {
						pubs[i] = k.PublicKey()
					}
				}()
			}
			close(start)
			wg.Wait()
			for i := range pubs {
				require.NoError(t, errs[i])
				assert.Equal(t, pubs[0], pubs[i], "goroutine %d (instance %d) got another key", i, i%2)
			}
			// A third instance, started later, loads the same key.
			k, err := NewKeys(&certmagic.FileStorage{Path: dir}, nil).Load(context.Background(), "example.org", "s1")
			require.NoError(t, err)
			assert.Equal(t, pubs[0], k.PublicKey())
			assert.Equal(t, alg, k.Algorithm)
			assert.False(t, k.Created.IsZero())
		})
	}
}

// TestKeysStorageLayout: the key is PKCS #8 PEM at
// smtp/dkim/<domain>/<selector>/key.pem, with key.json beside it.
func TestKeysStorageLayout(t *testing.T) {
	fs := fileStorage(t)
	k, err := NewKeys(fs, nil).Get(t.Context(), KeySpec{Domain: "example.org", Selector: "s1", Algorithm: Ed25519SHA256})
	require.NoError(t, err)
	pemData, err := os.ReadFile(filepath.Join(fs.Path, "smtp", "dkim", "example.org", "s1", "key.pem"))
	require.NoError(t, err)
	assert.Contains(t, string(pemData), "-----BEGIN PRIVATE KEY-----")
	metaData, err := os.ReadFile(filepath.Join(fs.Path, "smtp", "dkim", "example.org", "s1", "key.json"))
	require.NoError(t, err)
	var meta map[string]any
	require.NoError(t, json.Unmarshal(metaData, &meta))
	assert.Equal(t, "example.org", meta["domain"])
	assert.Equal(t, "s1", meta["selector"])
	assert.Equal(t, "ed25519-sha256", meta["algorithm"])
	assert.Equal(t, k.PublicKey(), meta["public_key"])
	assert.NotEmpty(t, meta["created"])

	// The same selector asked for with another algorithm is an error, not
	// a second key.
	_, err = NewKeys(fs, nil).Get(t.Context(), KeySpec{Domain: "example.org", Selector: "s1", Algorithm: RSASHA256})
	assert.ErrorContains(t, err, "storage smtp/dkim/example.org/s1 holds an ed25519-sha256 key, the config says rsa-sha256")

	// A damaged key is an error, never replaced.
	require.NoError(t, os.WriteFile(filepath.Join(fs.Path, "smtp", "dkim", "example.org", "s1", "key.pem"), []byte("junk"), 0o600))
	_, err = NewKeys(fs, nil).Get(t.Context(), KeySpec{Domain: "example.org", Selector: "s1", Algorithm: Ed25519SHA256})
	assert.ErrorContains(t, err, "smtp/dkim/example.org/s1/key.pem: no PEM private key")
	data, _ := os.ReadFile(filepath.Join(fs.Path, "smtp", "dkim", "example.org", "s1", "key.pem"))
	assert.Equal(t, "junk", string(data))
}
