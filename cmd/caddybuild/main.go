// Command caddybuild builds a Caddy binary from the recipe in xcaddy.json,
// through xcaddy's library: xcaddy itself reads no such file, and a recipe
// kept in the repository says exactly which Caddy and which plugins a
// release is made of.
//
//	go run ./cmd/caddybuild                 # reads ./xcaddy.json, writes ./caddy
//	go run ./cmd/caddybuild -o /tmp/caddy   # another output
//
// It is the same as
//
//	go tool xcaddy build v2.11.9 \
//		--with github.com/seed7b014b84/caddy-smtp@v0.0.0=./ \
//		--with github.com/mholt/caddy-l4@v0.1.2
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
)

func main() {
	recipePath := flag.String("recipe", "xcaddy.json", "the build recipe")
	output := flag.String("o", "", "the binary to write (default: the recipe's output, beside the recipe)")
	flag.Parse()
	if err := run(*recipePath, *output); err != nil {
		fmt.Fprintln(os.Stderr, "caddybuild:", err)
		os.Exit(1)
	}
}

func run(recipePath, output string) error {
	r, err := loadRecipe(recipePath)
	if err != nil {
		return err
	}
	base := filepath.Dir(recipePath)
	b, err := r.builder(base)
	if err != nil {
		return err
	}
	if output == "" {
		output = filepath.Join(base, r.Output)
	}
	if output, err = filepath.Abs(output); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := b.Build(ctx, output); err != nil {
		return fmt.Errorf("building %s: %w", output, err)
	}
	return nil
}
