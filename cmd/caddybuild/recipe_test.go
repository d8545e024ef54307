package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/xcaddy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRepositoryRecipe(t *testing.T) {
	r, err := loadRecipe("../../xcaddy.json")
	require.NoError(t, err)
	b, err := r.builder("../..")
	require.NoError(t, err)
	root, err := filepath.Abs("../..")
	require.NoError(t, err)

	assert.Equal(t, "v2.11.9", b.CaddyVersion)
	assert.Equal(t, []xcaddy.Dependency{
		{PackagePath: "github.com/seed7b014b84/caddy-smtp", Version: "v0.0.0"},
		{PackagePath: "github.com/mholt/caddy-l4", Version: "v0.1.2"},
	}, b.Plugins)
	assert.Equal(t, []xcaddy.Replace{
		xcaddy.NewReplace("github.com/seed7b014b84/caddy-smtp@v0.0.0", root),
	}, b.Replacements)
	assert.Equal(t, "caddy", r.Output)
}

func TestBadRecipes(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"no caddy version", `{"plugins": []}`, "caddy_version: required"},
		{"unknown key", `{"caddy_version": "v2.11.9", "plugin": []}`, `unknown field "plugin"`},
		{"plugin without module", `{"caddy_version": "v2.11.9", "plugins": [{"version": "v1.0.0"}]}`, "plugins[0].module: required"},
		{"replace without version", `{"caddy_version": "v2.11.9", "plugins": [{"module": "x.example/m", "replace": "."}]}`, "plugins[0].version: required with replace"},
		{"not JSON", `caddy_version = 2`, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "xcaddy.json")
			require.NoError(t, os.WriteFile(path, []byte(tt.body), 0o644))
			_, err := loadRecipe(path)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
