// Package queuecmd is the `caddy smtp-queue` command: the queue of the
// running Caddy, through its admin API (admin.api.smtp), as Postfix's
// mailq, postqueue and postsuper are for Postfix's queue. It lists
// messages (a table like mailq's, or JSON), shows one, acts on one or on
// every message a filter selects, prints the summary by destination and
// age (qshape), manages hold rules, and pauses or resumes delivery.
package queuecmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/seed7b014b84/caddy-smtp/internal/adminclient"
	"github.com/seed7b014b84/caddy-smtp/internal/sysexits"
	"github.com/seed7b014b84/caddy-smtp/queueapi"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-queue",
		Usage: "list|show|retry|hold|release|bounce|delete|summary|holds|pause|resume [flags]",
		Short: "Shows and manages the smtp app's queue of the running Caddy",
		Long: `
Shows and manages the queue of the smtp app in the running Caddy, through
its admin API (the endpoint of --address, else of --config, else the
CADDY_ADMIN environment variable, else localhost:2019).

  list                  the messages, with the filters below (--json for JSON)
  show ID               one message: envelope, recipients, attempts
  retry|hold|release|bounce|delete [ID...]
                        an action on the messages named, or on every message
                        the filters select (--all for every message)
  summary               messages by destination and age (as qshape)
  holds                 the hold rules; holds add [filters] [--expires-in D]
                        [--comment C]; holds delete ID
  pause, resume         stop and restart delivery (attempts in flight end)

Filters: --from, --to (an address, or @domain), --domain (a recipient
domain), --destination (a destination or an MX host), --state (pending,
deferred, held, failed), --held, --older-than, --younger-than (1h, 2d),
--next-before (a duration from now), --id.`,
		CobraFunc: func(cmd *cobra.Command) {
			for _, sub := range subcommands() {
				cmd.AddCommand(sub)
			}
		},
	})
}

// common are the flags every subcommand has.
type common struct {
	address, config, adapter string
	json                     bool
}

func (c *common) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.address, "address", "", "The address of Caddy's admin endpoint")
	cmd.Flags().StringVarP(&c.config, "config", "c", "", "A config to read the admin endpoint from")
	cmd.Flags().StringVarP(&c.adapter, "adapter", "a", "", "The config's adapter")
	cmd.Flags().BoolVar(&c.json, "json", false, "Print JSON")
}

// filter are the filter flags.
type filter struct {
	from, to, domain, destination, state, held string
	olderThan, youngerThan, nextBefore         string
	ids                                        []string
	all                                        bool
	limit                                      int
	reason                                     string
}

func (f *filter) add(cmd *cobra.Command, action bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.from, "from", "", "Sender address, or @domain")
	fl.StringVar(&f.to, "to", "", "Recipient address, or @domain")
	fl.StringVar(&f.domain, "domain", "", "Recipient domain")
	fl.StringVar(&f.destination, "destination", "", "Destination, or one of its MX hosts")
	fl.StringVar(&f.state, "state", "", "pending, deferred, held or failed")
	fl.StringVar(&f.held, "held", "", "true or false")
	fl.StringVar(&f.olderThan, "older-than", "", "Arrived longer ago than this (1h, 2d)")
	fl.StringVar(&f.youngerThan, "younger-than", "", "Arrived less long ago than this")
	fl.StringVar(&f.nextBefore, "next-before", "", "Next attempt within this (a duration) or before this time (RFC 3339)")
	fl.StringArrayVar(&f.ids, "id", nil, "A queue ID (repeatable)")
	if action {
		fl.BoolVar(&f.all, "all", false, "Every message, when no filter is given")
		fl.StringVar(&f.reason, "reason", "", "Why (kept with a hold, said in a bounce)")
	} else {
		fl.IntVar(&f.limit, "limit", 0, "Most messages to list (default: all)")
	}
}

func (f *filter) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"from": f.from, "to": f.to, "domain": f.domain, "destination": f.destination,
		"state": f.state, "held": f.held, "older_than": f.olderThan, "younger_than": f.youngerThan,
		"next_before": f.nextBefore, "reason": f.reason} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for _, id := range f.ids {
		q.Add("id", id)
	}
	if f.all {
		q.Set("all", "true")
	}
	return q
}

// exit is a status and an error for the command wrapper.
type exit struct {
	status int
	err    error
}

func (e *exit) Error() string { return e.err.Error() }

// run wraps a subcommand, printing its error and exiting with its status.
func run(f func(args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := f(args)
		if err == nil {
			return nil
		}
		fmt.Fprintf(os.Stderr, "smtp-queue %s: %v\n", cmd.Name(), err)
		status := sysexits.Software
		var e *exit
		if errors.As(err, &e) {
			status = e.status
		}
		os.Exit(status)
		return nil
	}
}

func subcommands() []*cobra.Command {
	var out []*cobra.Command
	{
		var c common
		var f filter
		cmd := &cobra.Command{Use: "list", Short: "Lists the queued messages", Args: cobra.NoArgs}
		c.add(cmd)
		f.add(cmd, false)
		cmd.RunE = run(func([]string) error { return list(&c, &f) })
		out = append(out, cmd)
	}
	{
		var c common
		cmd := &cobra.Command{Use: "show ID", Short: "Shows one message", Args: cobra.ExactArgs(1)}
		c.add(cmd)
		cmd.RunE = run(func(args []string) error { return show(&c, args[0]) })
		out = append(out, cmd)
	}
	for _, action := range []string{"retry", "hold", "release", "bounce", "delete"} {
		var c common
		var f filter
		cmd := &cobra.Command{Use: action + " [ID...]", Short: strings.ToUpper(action[:1]) + action[1:] + "s messages"}
		c.add(cmd)
		f.add(cmd, true)
		cmd.RunE = run(func(args []string) error { return act(&c, &f, action, args) })
		out = append(out, cmd)
	}
	{
		var c common
		cmd := &cobra.Command{Use: "summary", Short: "Messages by destination and age", Args: cobra.NoArgs}
		c.add(cmd)
		cmd.RunE = run(func([]string) error { return summary(&c) })
		out = append(out, cmd)
	}
	{
		var c common
		var h struct {
			sender, recipient, destination, comment, expiresIn, id string
		}
		cmd := &cobra.Command{Use: "holds [add|delete ID]", Short: "Lists, adds and removes hold rules", Args: cobra.MaximumNArgs(2)}
		c.add(cmd)
		cmd.Flags().StringVar(&h.sender, "sender-domain", "", "add: hold the messages from this domain")
		cmd.Flags().StringVar(&h.recipient, "recipient-domain", "", "add: hold the messages to this domain")
		cmd.Flags().StringVar(&h.destination, "destination", "", "add: hold the messages to this destination or MX host")
		cmd.Flags().StringVar(&h.comment, "comment", "", "add: why")
		cmd.Flags().StringVar(&h.expiresIn, "expires-in", "", "add: remove the rule after this long (2h, 1d)")
		cmd.Flags().StringVar(&h.id, "rule-id", "", "add: the rule's ID (default: made up)")
		cmd.RunE = run(func(args []string) error {
			switch {
			case len(args) == 0:
				return holdsList(&c)
			case args[0] == "add" && len(args) == 1:
				body := map[string]string{"sender_domain": h.sender, "recipient_domain": h.recipient,
					"destination": h.destination, "comment": h.comment, "expires_in": h.expiresIn, "id": h.id}
				for k, v := range body {
					if v == "" {
						delete(body, k)
					}
				}
				return holdsAdd(&c, body)
			case args[0] == "delete" && len(args) == 2:
				return request(&c, http.MethodDelete, "/smtp/queue/holds/"+url.PathEscape(args[1]), nil, printTouched(&c))
			}
			return &exit{sysexits.Usage, errors.New("usage: holds, holds add [flags], holds delete ID")}
		})
		out = append(out, cmd)
	}
	for _, name := range []string{"pause", "resume"} {
		var c common
		cmd := &cobra.Command{Use: name, Short: strings.ToUpper(name[:1]) + name[1:] + "s delivery", Args: cobra.NoArgs}
		c.add(cmd)
		cmd.RunE = run(func([]string) error {
			return request(&c, http.MethodPost, "/smtp/queue/"+name, nil, func(b []byte) error {
				if c.json {
					_, err := os.Stdout.Write(b)
					return err
				}
				var st struct {
					Paused bool `json:"paused"`
				}
				_ = json.Unmarshal(b, &st)
				if st.Paused {
					fmt.Println("delivery is paused")
				} else {
					fmt.Println("delivery is running")
				}
				return nil
			})
		})
		out = append(out, cmd)
	}
	for _, cmd := range out {
		cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
			fmt.Fprintf(os.Stderr, "smtp-queue %s: %v\n", c.Name(), err)
			os.Exit(sysexits.Usage)
			return err
		})
	}
	return out
}

// request calls the admin API and hands the answer's body to ok, or
// returns the API's error.
func request(c *common, method, uri string, body io.Reader, ok func([]byte) error) error {
	addr, err := caddycmd.DetermineAdminAPIAddress(c.address, nil, c.config, c.adapter)
	if err != nil {
		return &exit{sysexits.Usage, err}
	}
	var headers http.Header
	if body != nil {
		headers = http.Header{"Content-Type": []string{"application/json"}}
	}
	resp, err := adminclient.Do(context.Background(), addr, method, uri, headers, body)
	if err != nil {
		return &exit{sysexits.TempFail, fmt.Errorf("the admin API at %s: %w", addr, err)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return &exit{sysexits.IOErr, err}
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		status := sysexits.Unavailable
		switch resp.StatusCode {
		case http.StatusBadRequest:
			status = sysexits.Usage
		case http.StatusNotFound:
			status = sysexits.DataErr
		case http.StatusUnauthorized, http.StatusForbidden:
			status = sysexits.NoPerm
		case http.StatusServiceUnavailable:
			status = sysexits.TempFail
		}
		return &exit{status, fmt.Errorf("%s: %s", resp.Status, e.Error)}
	}
	return ok(b)
}

// list prints the messages, a page at a time, as mailq does.
func list(c *common, f *filter) error {
	q := f.query()
	var all []queueapi.MessageView
	for {
		if f.limit > 0 {
			q.Set("limit", fmt.Sprint(min(f.limit-len(all), 1000)))
		} else {
			q.Set("limit", "1000")
		}
		var page struct {
			Messages []queueapi.MessageView `json:"messages"`
			Next     string                 `json:"next"`
		}
		if err := request(c, http.MethodGet, "/smtp/queue?"+q.Encode(), nil, func(b []byte) error {
			return json.Unmarshal(b, &page)
		}); err != nil {
			return err
		}
		all = append(all, page.Messages...)
		if page.Next == "" || (f.limit > 0 && len(all) >= f.limit) {
			break
		}
		q.Set("cursor", page.Next)
	}
	if c.json {
		return printJSON(map[string]any{"messages": all})
	}
	printMailq(os.Stdout, all)
	return nil
}

// printMailq prints messages as Postfix's mailq does: a line per message
// (ID, with ! when held; size; arrival; sender), then each recipient not
// yet delivered with its last error in parentheses before it.
func printMailq(w io.Writer, msgs []queueapi.MessageView) {
	if len(msgs) == 0 {
		fmt.Fprintln(w, "Mail queue is empty")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "-Queue ID-\t-Size-\t-Arrival Time-\t-Sender/Recipient-------")
	var total int64
	for _, m := range msgs {
		total += m.Size
		id := m.ID
		if m.State == "held" {
			id += "!"
		}
		from := m.From
		if from == "" {
			from = "MAILER-DAEMON"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", id, m.Size, m.Arrived.Local().Format("Mon Jan _2 15:04:05"), from)
		if m.HoldReason != "" {
			fmt.Fprintf(tw, "\t\t\t(held: %s)\n", m.HoldReason)
		}
		for _, r := range m.Recipients {
			if r.State == "delivered" {
				continue
			}
			why := r.LastDetail
			if why == "" && r.LastReply != nil {
				why = r.LastReply.String()
			}
			if why != "" {
				fmt.Fprintf(tw, "\t\t\t(%s)\n", oneLine(why, 100))
			}
			line := r.Addr
			if r.State == "failed" {
				line += " [failed]"
			}
			fmt.Fprintf(tw, "\t\t\t%s\n", line)
		}
		fmt.Fprintln(tw, "\t\t\t")
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "-- %d Kbytes in %d Request%s.\n", (total+1023)/1024, len(msgs), plural(len(msgs)))
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max-3] + "..."
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// show prints one message.
func show(c *common, id string) error {
	return request(c, http.MethodGet, "/smtp/queue/"+url.PathEscape(id), nil, func(b []byte) error {
		if c.json {
			_, err := os.Stdout.Write(b)
			return err
		}
		var m queueapi.DetailView
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		from := m.From
		if from == "" {
			from = "<> (a notice)"
		}
		fmt.Fprintf(tw, "id:\t%s\nstate:\t%s\nfrom:\t%s\nsize:\t%d\narrived:\t%s (%s ago)\n", m.ID, m.State, from, m.Size,
			m.Arrived.Local().Format(time.RFC1123Z), m.Age)
		if m.HoldReason != "" {
			fmt.Fprintf(tw, "held:\t%s\n", m.HoldReason)
		}
		if !m.NextAttempt.IsZero() {
			fmt.Fprintf(tw, "next attempt:\t%s\n", m.NextAttempt.Local().Format(time.RFC1123Z))
		}
		fmt.Fprintf(tw, "source:\t%s\n", m.Source)
		for _, r := range m.Recipients {
			fmt.Fprintf(tw, "\nrecipient:\t%s\n\tstate %s, %d attempt%s", r.Addr, r.State, r.Attempts, plural(r.Attempts))
			if !r.NextAttempt.IsZero() {
				fmt.Fprintf(tw, ", next %s", r.NextAttempt.Local().Format(time.RFC1123Z))
			}
			fmt.Fprintln(tw)
			for _, a := range r.History {
				what := a.Error
				if a.Reply != nil {
					what = a.Reply.String()
				}
				fmt.Fprintf(tw, "\t%s  %s %s  %s\n", a.At.Local().Format("Jan _2 15:04:05"), a.Host, a.Address, oneLine(what, 120))
			}
		}
		return tw.Flush()
	})
}

// act does an action on the named messages, or on those the filters
// select.
func act(c *common, f *filter, action string, ids []string) error {
	f.ids = append(f.ids, ids...)
	q := f.query()
	if len(q) == 0 || (len(q) == 1 && q.Has("reason")) {
		return &exit{sysexits.Usage, fmt.Errorf("%s every message? say --all, or give IDs or a filter", action)}
	}
	method, path := http.MethodPost, "/smtp/queue/"+action
	if action == "delete" {
		method, path = http.MethodDelete, "/smtp/queue"
	}
	return request(c, method, path+"?"+q.Encode(), nil, printTouched(c))
}

func printTouched(c *common) func([]byte) error {
	return func(b []byte) error {
		if c.json {
			_, err := os.Stdout.Write(b)
			return err
		}
		var res struct {
			Touched  int `json:"touched"`
			Deferred int `json:"deferred"`
		}
		if err := json.Unmarshal(b, &res); err != nil {
			return err
		}
		fmt.Printf("%d message%s", res.Touched, plural(res.Touched))
		if res.Deferred > 0 {
			fmt.Printf(" (%d when their attempt in progress ends)", res.Deferred)
		}
		fmt.Println()
		return nil
	}
}

// summary prints the queue by destination and age.
func summary(c *common) error {
	return request(c, http.MethodGet, "/smtp/queue/summary", nil, func(b []byte) error {
		if c.json {
			_, err := os.Stdout.Write(b)
			return err
		}
		var s struct {
			Ages         []string `json:"ages"`
			Messages     int      `json:"messages"`
			MessageAges  []int    `json:"message_ages"`
			Destinations []struct {
				Destination string `json:"destination"`
				Messages    int    `json:"messages"`
				Ages        []int  `json:"ages"`
				LastError   string `json:"last_error"`
				Suspended   bool   `json:"suspended"`
			} `json:"destinations"`
		}
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 1, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "\tT\t%s\t\n", strings.Join(s.Ages, "\t"))
		// The total counts each message once, also one with recipients
		// at several destinations.
		totals := s.MessageAges
		fmt.Fprintf(tw, "TOTAL\t%d\t%s\t\n", s.Messages, joinInts(totals))
		for _, d := range s.Destinations {
			name := d.Destination
			if d.Suspended {
				name += " (suspended)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t\n", name, d.Messages, joinInts(d.Ages))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, d := range s.Destinations {
			if d.LastError != "" {
				fmt.Printf("%s: %s\n", d.Destination, oneLine(d.LastError, 160))
			}
		}
		return nil
	})
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, "\t")
}

func holdsList(c *common) error {
	return request(c, http.MethodGet, "/smtp/queue/holds", nil, func(b []byte) error {
		if c.json {
			_, err := os.Stdout.Write(b)
			return err
		}
		var h struct {
			Holds []struct {
				ID              string    `json:"id"`
				SenderDomain    string    `json:"sender_domain"`
				RecipientDomain string    `json:"recipient_domain"`
				Destination     string    `json:"destination"`
				Comment         string    `json:"comment"`
				Expires         time.Time `json:"expires"`
			} `json:"holds"`
		}
		if err := json.Unmarshal(b, &h); err != nil {
			return err
		}
		if len(h.Holds) == 0 {
			fmt.Println("no hold rules")
			return nil
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSENDER DOMAIN\tRECIPIENT DOMAIN\tDESTINATION\tEXPIRES\tCOMMENT")
		for _, r := range h.Holds {
			exp := "never"
			if !r.Expires.IsZero() {
				exp = r.Expires.Local().Format(time.RFC1123Z)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, dash(r.SenderDomain), dash(r.RecipientDomain), dash(r.Destination), exp, r.Comment)
		}
		return tw.Flush()
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func holdsAdd(c *common, body map[string]string) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return request(c, http.MethodPost, "/smtp/queue/holds", bytes.NewReader(b), func(b []byte) error {
		if c.json {
			_, err := os.Stdout.Write(b)
			return err
		}
		var res struct {
			Hold struct {
				ID string `json:"id"`
			} `json:"hold"`
			Touched int `json:"touched"`
		}
		if err := json.Unmarshal(b, &res); err != nil {
			return err
		}
		fmt.Printf("hold rule %s added; %d queued message%s held\n", res.Hold.ID, res.Touched, plural(res.Touched))
		return nil
	})
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "\t")
	return enc.Encode(v)
}
