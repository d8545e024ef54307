package caddysmtp

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadmeExample checks that the README's example Caddyfile and its JSON
// say the same, and load.
func TestReadmeExample(t *testing.T) {
	t.Setenv("SMTP_RELAY_SECRET", "s3cret")
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	caddyfiles := regexp.MustCompile("(?s)```caddyfile\n(\\{\n\tsmtp \\{.*?)```").FindSubmatch(readme)
	require.NotNil(t, caddyfiles, "README has a Caddyfile example")
	jsons := regexp.MustCompile("(?s)```json\n(\\{\n\t\"apps\".*?)```").FindSubmatch(readme)
	require.NotNil(t, jsons, "README has a JSON example")

	path := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(path, caddyfiles[1], 0o644))
	adapted, err := adapt(t, path)
	require.NoError(t, err)

	normal := func(raw []byte) string {
		var cfg struct {
			Apps struct {
				SMTP App `json:"smtp"`
			} `json:"apps"`
		}
		require.NoError(t, json.Unmarshal(raw, &cfg))
		out, err := json.Marshal(&cfg.Apps.SMTP)
		require.NoError(t, err)
		require.NoError(t, validate(t, string(out)))
		return string(out)
	}
	assert.JSONEq(t, normal(jsons[1]), normal(adapted))
}
