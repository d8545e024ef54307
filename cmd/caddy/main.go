// Command caddy is Caddy with the smtp app and caddy-l4 plugged in: the
// program `xcaddy build --with github.com/seed7b014b84/caddy-smtp --with
// github.com/mholt/caddy-l4` would generate, kept here so that
//
//	go run ./cmd/caddy run --config examples/Caddyfile
//
// runs the working tree without a separate build step.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy's standard modules, the layer4 app and this app
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-l4"
	_ "github.com/seed7b014b84/caddy-smtp"
)

func main() {
	caddycmd.Main()
}
