package caddysmtp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/seed7b014b84/caddy-smtp/internal/sysexits"
	"github.com/seed7b014b84/caddy-smtp/mtasts"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-plan",
		Usage: "[--config <path> [--adapter <name>]] [--retry <n>] [--json] <domain>",
		Short: "Prints the connection plan the smtp app makes for a domain, sending nothing",
		Long: `
Prints where mail for the domain would go with the smtp app of the given
config (the default Caddyfile, or --config): the route its next_hop gives,
then the hosts in order, each with its addresses in order, the source
address and EHLO name per address, and the TLS policy. It looks up DNS, but
connects to nothing. --retry sets retry_num for rules that depend on it.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().Int("retry", 0, "retry_num, for rule lists")
			cmd.Flags().Bool("json", false, "Print the plan as JSON")
			cmd.Args = cobra.ExactArgs(1)
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdPlan)
		},
	})
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-send",
		Usage: "--from <address> --to <address> [--to <address>...] [--config <path> [--adapter <name>]] < message",
		Short: "Delivers one message read from standard input, and prints the report",
		Long: `
Delivers the RFC 5322 message read from standard input to the recipients,
with the smtp app of the given config (the default Caddyfile, or --config),
and prints the delivery report as JSON. It makes one delivery attempt and
keeps nothing: a caller that gets 75 still holds the message.

The exit status is sendmail's (sysexits.h), for scripts and cron:

  0   every recipient was delivered
  75  (EX_TEMPFAIL) some were deferred and none failed: try again later
  69  (EX_UNAVAILABLE) some recipient failed for good
  64  (EX_USAGE) bad usage: a missing or unknown flag, an argument
  65  (EX_DATAERR) bad input: a malformed address, an empty message
  66  (EX_NOINPUT) standard input could not be read
  78  (EX_CONFIG) the config could not be loaded`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("from", "", "Envelope sender (empty for a bounce)")
			cmd.Flags().StringArray("to", nil, "Envelope recipient (repeatable)")
			cmd.Flags().Duration("timeout", 15*time.Minute, "Give up after this long")
			usageExit(cmd, cobra.NoArgs)
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdSend)
		},
	})
}

// loadApp provisions the smtp app of the config file, alone (no other app
// of the config is started, so nothing listens).
func loadApp(fl caddycmd.Flags) (*App, error) {
	raw, _, _, err := caddycmd.LoadConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Storage json.RawMessage            `json:"storage"`
		Apps    map[string]json.RawMessage `json:"apps"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return nil, fmt.Errorf("reading config: %w", err)
		}
	}
	smtpRaw := cfg.Apps["smtp"]
	if len(smtpRaw) == 0 {
		smtpRaw = json.RawMessage("{}")
	}
	// The config's storage comes along: DKIM keys and queue state live
	// there, and the commands must see the ones caddy run sees.
	ctx, err := caddy.ProvisionContext(&caddy.Config{
		Admin:      &caddy.AdminConfig{Disabled: true},
		StorageRaw: cfg.Storage,
		AppsRaw:    caddy.ModuleMap{"smtp": smtpRaw},
	})
	if err != nil {
		return nil, err
	}
	app, err := ctx.App("smtp")
	if err != nil {
		return nil, err
	}
	return app.(*App), nil
}

func cmdPlan(fl caddycmd.Flags) (int, error) {
	app, err := loadApp(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	defer func() { _ = app.Cleanup() }()
	domain := strings.ToLower(strings.TrimSuffix(fl.Arg(0), "."))
	vars := rules.Vars{RetryNum: int64(fl.Int("retry")), Rcpt: "postmaster@" + domain, RcptDomain: domain}
	hop, err := app.NextHop.Eval(&vars)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	dest := strategy.Destination{Domain: domain}
	var remote *Remote
	if hop != MX {
		remote = app.Remotes[string(hop)]
		dest.Remote = &strategy.Remote{Name: string(hop), Address: remote.Address, Port: uint16(remote.Port)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	plan, planErr := app.Planner().Plan(ctx, dest, vars)
	if plan == nil {
		return 1, planErr
	}
	var sts *mtasts.Policy
	if remote == nil && planErr == nil {
		if sts, err = app.stsPolicy(ctx, plan, &vars); err != nil {
			return 1, err
		}
	}
	policies := make([]tlsPlan, len(plan.Hosts))
	for i := range plan.Hosts {
		hv := vars
		hv.MX = plan.Hosts[i].Name
		policies[i] = app.tlsPlan(ctx, plan, &plan.Hosts[i], remote, sts, &hv)
	}
	if fl.Bool("json") {
		out := struct {
			*strategy.Plan
			TLS []tlsPlan `json:"tls"`
		}{plan, policies}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "\t")
		if err := enc.Encode(out); err != nil {
			return 1, err
		}
	} else {
		printPlan(os.Stdout, plan, policies)
	}
	if planErr != nil {
		return 1, planErr
	}
	return 0, nil
}

// tlsPlan is the TLS policy a session with a host would have.
type tlsPlan struct {
	// Policy is what the report would name: none, opportunistic,
	// required, dane or mta-sts; or why the host
	// would not be used.
	Policy            string            `json:"policy"`
	StartTLS          transport.TLSMode `json:"starttls"`
	Implicit          bool              `json:"implicit,omitempty"`
	AllowInvalidCerts bool              `json:"allow_invalid_certs,omitempty"`
	MTASTS            transport.TLSMode `json:"mta_sts"`
	DANE              transport.TLSMode `json:"dane"`
}

func (a *App) tlsPlan(ctx context.Context, plan *strategy.Plan, h *strategy.Host, remote *Remote, sts *mtasts.Policy, vars *rules.Vars) tlsPlan {
	var p tlsPlan
	if o, err := a.sessionOptions(h, remote, vars); err == nil {
		p.Policy = basePolicy(o)
		if remote == nil && h.Err == nil {
			if p.Policy, err = a.applyDANE(ctx, plan, h, vars, &o); err != nil {
				p.Policy = "host not used: " + err.Error()
			} else {
				p.Policy = applySTS(sts, h, &o, p.Policy, nil)
			}
		}
		p.StartTLS, p.Implicit, p.AllowInvalidCerts = o.StartTLS, o.ImplicitTLS, o.AllowInvalidCerts
	}
	if remote == nil {
		p.MTASTS, _ = a.TLS.MTASTS.Eval(vars)
		p.DANE, _ = a.TLS.DANE.Eval(vars)
	} else {
		p.MTASTS, p.DANE = transport.TLSDisable, transport.TLSDisable // no MX lookup: no MTA-STS or DANE
	}
	return p
}

func printPlan(w io.Writer, plan *strategy.Plan, policies []tlsPlan) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if plan.Remote != "" {
		fmt.Fprintf(tw, "route:\tremote %s\n", plan.Remote)
	} else {
		kind := "MX"
		if plan.Implicit {
			kind = "implicit MX (no MX records)"
		}
		fmt.Fprintf(tw, "route:\t%s of %s (DNSSEC %s)\n", kind, plan.Domain, plan.MXSecurity)
	}
	for i, h := range plan.Hosts {
		p := policies[i]
		fmt.Fprintf(tw, "\nhost %d:\t%s (preference %d)\n", i+1, h.Name, h.Preference)
		if h.Err != nil {
			fmt.Fprintf(tw, "\tskipped: %v\n", h.Err)
			continue
		}
		fmt.Fprintf(tw, "\tip_strategy %s, fallback_delay %s, connect timeout %s, addresses DNSSEC %s\n",
			h.Strategy, h.FallbackDelay, h.ConnectTimeout, h.AddrSecurity)
		tlsLine := "starttls " + string(p.StartTLS)
		if p.Implicit {
			tlsLine = "implicit TLS"
		}
		if p.AllowInvalidCerts {
			tlsLine += ", certificates not checked"
		}
		fmt.Fprintf(tw, "\ttls policy: %s (%s; tls.mta_sts %s, tls.dane %s)\n", p.Policy, tlsLine, p.MTASTS, p.DANE)
		for j, c := range h.Candidates {
			src := "kernel's choice"
			if len(c.Sources) > 0 {
				var names []string
				for _, s := range c.Sources {
					names = append(names, s.Addr.String())
				}
				src = strings.Join(names, ", then ")
			}
			fmt.Fprintf(tw, "\t%d. %s\tfrom %s\tEHLO %s\n", j+1, c.Addr, src, c.EHLO)
		}
	}
	_ = tw.Flush()
}

// usageExit makes cmd exit with EX_USAGE (64) for a bad flag or a wrong
// number of arguments, which cobra would otherwise report with status 1
// before the command runs (Caddy's command wrapper turns only a command's
// own status into the exit status).
func usageExit(cmd *cobra.Command, args cobra.PositionalArgs) {
	fail := func(c *cobra.Command, err error) {
		fmt.Fprintf(os.Stderr, "%s: %v\nusage: caddy %s %s\n", c.Name(), err, c.Name(), c.Use[len(c.Name()):])
		os.Exit(sysexits.Usage)
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		fail(c, err)
		return err
	})
	cmd.Args = func(c *cobra.Command, a []string) error {
		if err := args(c, a); err != nil {
			fail(c, err)
			return err
		}
		return nil
	}
}

func cmdSend(fl caddycmd.Flags) (int, error) {
	to, err := fl.GetStringArray("to")
	if err != nil {
		return sysexits.Usage, err
	}
	if len(to) == 0 {
		return sysexits.Usage, fmt.Errorf("--to: at least one recipient")
	}
	for i, r := range to {
		if !validAddr(r) {
			return sysexits.DataErr, fmt.Errorf("--to[%d]: %q is not an address (local-part@domain)", i, r)
		}
	}
	if from := fl.String("from"); from != "" && !validAddr(from) {
		return sysexits.DataErr, fmt.Errorf("--from: %q is not an address (local-part@domain, or empty for a bounce)", from)
	}
	body, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<30))
	if err != nil {
		return sysexits.NoInput, fmt.Errorf("reading the message from standard input: %w", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return sysexits.DataErr, fmt.Errorf("standard input: empty message")
	}
	app, err := loadApp(fl)
	if err != nil {
		return sysexits.Config, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		app.ConnPool().Drain(ctx)
		cancel()
		_ = app.Cleanup()
	}()
	msg := &Message{From: fl.String("from"), Body: bytes.NewReader(body), Size: int64(len(body)), EightBit: !isASCII(body)}
	for _, r := range to {
		msg.To = append(msg.To, transport.Recipient{Addr: r})
	}
	ctx, cancel := context.WithTimeout(context.Background(), fl.Duration("timeout"))
	defer cancel()
	report, err := app.Deliver(ctx, msg)
	if err != nil {
		return sysexits.DataErr, err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "\t")
	if err := enc.Encode(report); err != nil {
		return sysexits.IOErr, err
	}
	return reportStatus(report), nil
}

// reportStatus is the exit status of a delivery: 0 when every recipient
// was delivered, EX_UNAVAILABLE when any failed, EX_TEMPFAIL when some were
// deferred and none failed.
func reportStatus(r *Report) int {
	_, deferred, failed := r.Counts()
	switch {
	case failed > 0:
		return sysexits.Unavailable
	case deferred > 0:
		return sysexits.TempFail
	}
	return sysexits.OK
}

// validAddr reports whether s looks like local-part@domain, with nothing
// that could end a command line or an address.
func validAddr(s string) bool {
	at := strings.LastIndexByte(s, '@')
	return at > 0 && at < len(s)-1 && !strings.ContainsAny(s, "<>\r\n\x00 ")
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
