package caddysmtp

// The modules and commands that call the app, registered with it: building
// Caddy with this module (xcaddy --with github.com/seed7b014b84/caddy-smtp)
// brings them in too.
import (
	_ "github.com/seed7b014b84/caddy-smtp/adminapi"
	_ "github.com/seed7b014b84/caddy-smtp/httpsend"
	_ "github.com/seed7b014b84/caddy-smtp/l4submission"
	_ "github.com/seed7b014b84/caddy-smtp/queuecmd"
	_ "github.com/seed7b014b84/caddy-smtp/queuepage"
	_ "github.com/seed7b014b84/caddy-smtp/sendmail"
)
