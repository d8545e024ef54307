package caddysmtp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/seed7b014b84/caddy-smtp/dkim"
	"github.com/seed7b014b84/caddy-smtp/internal/sysexits"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-dkim",
		Usage: "[--config <path> [--adapter <name>]] [rotate] [<domain>]",
		Short: "Prints the DKIM records to publish, or starts a key rotation",
		Long: `
Prints the DNS TXT records of the smtp app's DKIM signers, in zone file
form (each with its role in a comment: current, next or retired), for the domain (or every signing domain). It reads the config that
caddy run uses (the default Caddyfile, or --config), for its signers and
its storage: a key that does not exist yet is made now and kept there, so
its record can be published before Caddy first signs with it. The records
listed are the current keys', a rotation's next keys', and retired keys'
still kept.

  caddy smtp-dkim rotate <domain>

starts a rotation: it makes the next key of each signer of the domain
under a new selector (SELECTOR-YYYYMMDD), prints its record (or publishes
it, for a signer with a DNS provider), and leaves it to the running Caddy
to switch to it once the record resolves. The old record must stay
published for a week after the switch.

Exit status: 0 done, 64 bad usage, 78 the config could not be loaded, 69
the records could not be made or read.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().Duration("timeout", time.Minute, "Give up after this long")
			usageExit(cmd, dkimArgs)
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdDKIM)
		},
	})
}

// dkimArgs accepts [rotate] [<domain>]; rotate needs its domain.
func dkimArgs(_ *cobra.Command, args []string) error {
	switch {
	case len(args) > 2:
		return fmt.Errorf("too many arguments: %q", args)
	case len(args) == 2 && args[0] != "rotate":
		return fmt.Errorf("unknown subcommand %q (known: rotate)", args[0])
	case len(args) == 1 && args[0] == "rotate":
		return errors.New("rotate needs a domain: caddy smtp-dkim rotate <domain>")
	}
	return nil
}

func cmdDKIM(fl caddycmd.Flags) (int, error) {
	args := fl.Args()
	rotate := len(args) == 2
	domain := ""
	if len(args) > 0 {
		domain = args[len(args)-1]
	}
	app, err := loadApp(fl)
	if err != nil {
		return sysexits.Config, fmt.Errorf("loading config: %w", err)
	}
	defer func() { _ = app.Cleanup() }()
	if app.dkim == nil {
		return sysexits.Config, errors.New("the smtp app has no dkim signers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), fl.Duration("timeout"))
	defer cancel()
	var recs []dkim.Record
	if rotate {
		recs, err = app.dkim.Rotate(ctx, domain)
	} else {
		recs, err = app.dkim.Records(ctx, domain)
	}
	if err != nil {
		return sysexits.Unavailable, err
	}
	for _, r := range recs {
		fmt.Fprintf(os.Stdout, "%s ; %s\n", r.ZoneLine(), r.Role)
	}
	return 0, nil
}
