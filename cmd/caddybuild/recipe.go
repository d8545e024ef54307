package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/caddyserver/xcaddy"
)

// recipe is the content of xcaddy.json: what `xcaddy build` would be told
// on its command line, written down.
type recipe struct {
	// CaddyVersion is the Caddy release to build, such as "v2.11.9".
	CaddyVersion string `json:"caddy_version"`

	// Plugins are the modules to build in.
	Plugins []plugin `json:"plugins"`

	// Output is the binary to write, relative to the recipe's folder.
	// Default: "caddy".
	Output string `json:"output,omitempty"`
}

// plugin is one module to build in, as xcaddy's --with takes it.
type plugin struct {
	// Module is the Go module path.
	Module string `json:"module"`

	// Version is the module version; with Replace, any version (v0.0.0).
	Version string `json:"version,omitempty"`

	// Replace is a folder, relative to the recipe's, that holds the
	// module's source (xcaddy's --with MODULE@VERSION=FOLDER).
	Replace string `json:"replace,omitempty"`
}

// loadRecipe reads and checks the recipe at path.
func loadRecipe(path string) (*recipe, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading build recipe: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var r recipe
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.CaddyVersion == "" {
		return nil, fmt.Errorf("%s: caddy_version: required", path)
	}
	for i, p := range r.Plugins {
		if p.Module == "" {
			return nil, fmt.Errorf("%s: plugins[%d].module: required", path, i)
		}
		if p.Replace != "" && p.Version == "" {
			return nil, fmt.Errorf("%s: plugins[%d].version: required with replace (v0.0.0 will do)", path, i)
		}
	}
	if r.Output == "" {
		r.Output = "caddy"
	}
	return &r, nil
}

// builder turns the recipe into xcaddy's Builder, with relative folders
// made absolute against base (the recipe's folder).
func (r *recipe) builder(base string) (xcaddy.Builder, error) {
	b := xcaddy.Builder{CaddyVersion: r.CaddyVersion}
	for _, p := range r.Plugins {
		dep := xcaddy.Dependency{PackagePath: p.Module, Version: p.Version}
		b.Plugins = append(b.Plugins, dep)
		if p.Replace == "" {
			continue
		}
		dir := p.Replace
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(base, dir)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return b, fmt.Errorf("plugin %s: replace: %w", p.Module, err)
		}
		b.Replacements = append(b.Replacements, xcaddy.NewReplace(dep.String(), abs))
	}
	return b, nil
}
