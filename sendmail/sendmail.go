// Package sendmail is the `caddy sendmail` command: a drop-in for
// /usr/sbin/sendmail as web applications (PHP's mail()), cron and scripts
// call it. It reads a message on standard input, takes the recipients from
// its arguments or (-t) its headers, adds the headers a message must have
// (Date, Message-ID, From) when they are missing, and hands it to the
// running Caddy's queue through the admin API (POST /smtp/queue of
// `admin.api.smtp`). It exits with sendmail's statuses (sysexits.h).
//
// Installed as a link named sendmail (`ln -s $(which caddy)
// /usr/sbin/sendmail`), Caddy runs this command: a process started as
// "sendmail" is read as "caddy sendmail".
package sendmail

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/seed7b014b84/caddy-smtp/internal/adminclient"
	"github.com/seed7b014b84/caddy-smtp/internal/sysexits"
)

func init() {
	// A process started through a link named sendmail is `caddy
	// sendmail`: programs call /usr/sbin/sendmail with sendmail's flags.
	if len(os.Args) > 0 && filepath.Base(os.Args[0]) == "sendmail" {
		os.Args = append([]string{os.Args[0], "sendmail"}, os.Args[1:]...)
	}
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "sendmail",
		Usage: "[-t] [-i] [-f sender] [-F name] [-N dsn] [-R ret] [-V envid] [--address <admin>] [--] [recipient...] < message",
		Short: "Queues a message with the running Caddy's smtp app, as sendmail does",
		Long: `
Reads a message (RFC 5322) on standard input and hands it to the smtp app's
queue of the running Caddy, through its admin API (POST /smtp/queue). It
takes sendmail's flags, so that it can stand in for /usr/sbin/sendmail
(link it there, or call it from a wrapper script):

  -t           also take recipients from the To, Cc and Bcc headers
               (Bcc is removed from the message)
  -i, -oi      a line with a single dot does not end the message
  -f SENDER    the envelope sender (also -fSENDER, -r SENDER); default:
               the user's name at this host
  -F NAME      the sender's full name, for a From header that is missing
  -N DSN       the DSN NOTIFY of every recipient: never, or a list of
               success, failure, delay
  -R RET       the DSN RET: full or hdrs
  -V ENVID     the DSN ENVID
  -bm          read and queue a message (the default)
  -v           print the queue ID
  -oXXX, -B, -L, -U, -G, -C, -X, -h    taken and ignored, as Postfix does
  --address    the admin endpoint (default: the CADDY_ADMIN environment
               variable, else localhost:2019)
  --config, --adapter    a config to read the admin endpoint from

A message without Date, Message-ID or From gets them (From from the sender
and -F). It is queued only once it is on the queue's stable storage.

The exit status is sendmail's (sysexits.h):

  0   queued
  64  (EX_USAGE) bad usage: an unknown flag, no recipient
  65  (EX_DATAERR) bad input: a malformed address, a message too large
  66  (EX_NOINPUT) standard input could not be read
  75  (EX_TEMPFAIL) the queue could not take it now (Caddy not running,
      the queue full or unavailable): try again later
  70  (EX_SOFTWARE) an unexpected answer from Caddy`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.DisableFlagParsing = true
			cmd.RunE = func(_ *cobra.Command, args []string) error {
				status, err := Run(args, os.Stdin, os.Stdout, os.Stderr)
				if err != nil {
					fmt.Fprintf(os.Stderr, "sendmail: %v\n", err)
				}
				if status != 0 {
					os.Exit(status)
				}
				return nil
			}
		},
	})
}

// options are the parsed command line.
type options struct {
	extract    bool
	ignoreDots bool
	sender     string
	senderSet  bool
	fullName   string
	notify     []string
	ret        string
	envID      string
	verbose    bool
	address    string
	config     string
	adapter    string
	rcpts      []string
	help       bool
}

// usageError is a fault of the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// parseArgs reads sendmail's command line: single-dash flags whose value
// may follow the letter or be the next argument, and recipients.
func parseArgs(args []string) (*options, error) {
	o := new(options)
	value := func(i *int, arg string, name string) (string, error) {
		if len(arg) > 2 {
			return arg[2:], nil
		}
		if *i+1 >= len(args) {
			return "", usagef("%s needs a value", name)
		}
		*i++
		return args[*i], nil
	}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "--":
			o.rcpts = append(o.rcpts, args[i+1:]...)
			return o, nil
		case arg == "--help" || arg == "-help":
			o.help = true
		case strings.HasPrefix(arg, "--"):
			name, v, hasValue := strings.Cut(arg[2:], "=")
			switch name {
			case "address", "config", "adapter":
			default:
				return nil, usagef("unknown flag %s", arg)
			}
			if !hasValue {
				if i+1 >= len(args) {
					return nil, usagef("--%s needs a value", name)
				}
				i++
				v = args[i]
			}
			switch name {
			case "address":
				o.address = v
			case "config":
				o.config = v
			case "adapter":
				o.adapter = v
			}
		case len(arg) >= 2 && arg[0] == '-':
			var err error
			var v string
			switch arg[1] {
			case 't':
				o.extract = true
			case 'i':
				o.ignoreDots = true
			case 'v':
				o.verbose = true
			case 'f', 'r':
				if v, err = value(&i, arg, "-"+string(arg[1])); err == nil {
					o.sender, o.senderSet = v, true
				}
			case 'F':
				o.fullName, err = value(&i, arg, "-F")
			case 'N':
				if v, err = value(&i, arg, "-N"); err == nil {
					o.notify, err = parseNotify(v)
				}
			case 'R':
				if v, err = value(&i, arg, "-R"); err == nil {
					switch strings.ToUpper(v) {
					case "FULL", "HDRS":
						o.ret = strings.ToUpper(v)
					default:
						err = usagef("-R %s: want full or hdrs", v)
					}
				}
			case 'V':
				o.envID, err = value(&i, arg, "-V")
			case 'o':
				// -oi is -i; the other -o options (-oem, -odi, -oQ dir...)
				// are sendmail's tuning and are ignored.
				if arg == "-oi" {
					o.ignoreDots = true
				} else if len(arg) == 2 || arg == "-oQ" || arg == "-oA" {
					_, err = value(&i, arg, arg)
				}
			case 'b':
				mode := arg[2:]
				if mode == "" {
					mode, err = value(&i, arg, "-b")
				}
				switch {
				case err != nil:
				case mode == "m":
				case mode == "p":
					err = usagef("-bp: list the queue with `caddy smtp-queue list`")
				case mode == "s":
					err = usagef("-bs: SMTP on standard input is not supported; use the smtp_submission handler")
				default:
					err = usagef("-b%s: only -bm (read a message and queue it) is supported", mode)
				}
			case 'q':
				err = usagef("%s: run the queue with `caddy smtp-queue retry --all`", arg)
			case 'B', 'L', 'C', 'X', 'h':
				_, err = value(&i, arg, arg[:2])
			case 'U', 'G', 'n', 'm', 'e':
			default:
				err = usagef("unknown flag %s", arg)
			}
			if err != nil {
				return nil, err
			}
		default:
			o.rcpts = append(o.rcpts, arg)
		}
	}
	return o, nil
}

func parseNotify(v string) ([]string, error) {
	var out []string
	for _, n := range strings.Split(v, ",") {
		n = strings.ToUpper(strings.TrimSpace(n))
		switch n {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
			out = append(out, n)
		default:
			return nil, usagef("-N %s: want never, or success, failure and delay", v)
		}
	}
	if len(out) > 1 {
		for _, n := range out {
			if n == "NEVER" {
				return nil, usagef("-N %s: never goes alone", v)
			}
		}
	}
	return out, nil
}

// maxHeader bounds the header section read before the message streams on.
const maxHeader = 1 << 20

// Run runs the command with args (without the command's name), reading
// the message from stdin; it returns the exit status.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	o, err := parseArgs(args)
	if err != nil {
		return sysexits.Usage, err
	}
	if o.help {
		fmt.Fprintln(stdout, "usage: caddy sendmail [-t] [-i] [-f sender] [-F name] [-N dsn] [-R ret] [-V envid] [--address <admin>] [--] [recipient...] < message")
		return sysexits.OK, nil
	}
	if !o.senderSet {
		o.sender = defaultSender()
	}
	if o.sender != "" && o.sender != "<>" {
		a, err := mail.ParseAddress(o.sender)
		if err != nil || strings.ContainsAny(o.sender, "\r\n\x00") {
			return sysexits.DataErr, fmt.Errorf("-f %q: not an address", o.sender)
		}
		o.sender = a.Address
	} else {
		o.sender = ""
	}
	var rcpts []string
	for _, r := range o.rcpts {
		list, err := mail.ParseAddressList(r)
		if err != nil || strings.ContainsAny(r, "\r\n\x00") {
			return sysexits.DataErr, fmt.Errorf("recipient %q: not an address", r)
		}
		for _, a := range list {
			rcpts = append(rcpts, a.Address)
		}
	}

	in := bufio.NewReaderSize(stdin, 64<<10)
	header, err := readHeader(in, o.ignoreDots)
	if err != nil {
		return sysexits.NoInput, err
	}
	h, err := parseHeader(header)
	if err != nil {
		return sysexits.DataErr, err
	}
	if o.extract {
		for _, name := range []string{"To", "Cc", "Bcc"} {
			for _, v := range h.values(name) {
				list, err := mail.ParseAddressList(v)
				if err != nil {
					return sysexits.DataErr, fmt.Errorf("%s header: %v", name, err)
				}
				for _, a := range list {
					rcpts = append(rcpts, a.Address)
				}
			}
		}
	}
	if len(rcpts) == 0 {
		return sysexits.Usage, errors.New("no recipient: name them as arguments, or use -t to take them from the headers")
	}
	h.remove("Bcc")
	hostname, _ := os.Hostname()
	top := receivedHeader(hostname)
	if !h.has("From") {
		from := o.sender
		if from == "" {
			from = defaultSender()
		}
		top += "From: " + (&mail.Address{Name: o.fullName, Address: from}).String() + "\r\n"
	}
	if !h.has("Date") {
		top += "Date: " + time.Now().Format(time.RFC1123Z) + "\r\n"
	}
	if !h.has("Message-ID") {
		var b [12]byte
		_, _ = rand.Read(b[:])
		top += "Message-ID: <" + hex.EncodeToString(b[:]) + "@" + hostOr(hostname) + ">\r\n"
	}
	body := io.MultiReader(strings.NewReader(top), bytes.NewReader(h.bytes()), &dotReader{r: in, ignoreDots: o.ignoreDots})

	addr, err := caddycmd.DetermineAdminAPIAddress(o.address, nil, o.config, o.adapter)
	if err != nil {
		return sysexits.Usage, err
	}
	q := url.Values{}
	q.Set("from", o.sender)
	for _, r := range rcpts {
		q.Add("to", r)
	}
	for name, v := range map[string]string{"ret": o.ret, "envid": o.envID, "notify": strings.Join(o.notify, ",")} {
		if v != "" {
			q.Set(name, v)
		}
	}
	headers := http.Header{"Content-Type": []string{"message/rfc822"}}
	resp, err := adminclient.Do(context.Background(), addr, http.MethodPost, "/smtp/queue?"+q.Encode(), headers, body)
	if err != nil {
		var dr *dotReaderError
		if errors.As(err, &dr) {
			return sysexits.NoInput, dr.err
		}
		return sysexits.TempFail, fmt.Errorf("handing the message to Caddy at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	var answer struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(raw, &answer)
	if answer.Error == "" {
		answer.Error = strings.TrimSpace(string(raw))
	}
	switch {
	case resp.StatusCode == http.StatusAccepted:
		if o.verbose {
			fmt.Fprintf(stdout, "queued as %s\n", answer.ID)
		}
		return sysexits.OK, nil
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusRequestEntityTooLarge:
		return sysexits.DataErr, errors.New(answer.Error)
	case resp.StatusCode == http.StatusInsufficientStorage || resp.StatusCode == http.StatusServiceUnavailable ||
		resp.StatusCode == http.StatusNotFound:
		return sysexits.TempFail, fmt.Errorf("not queued (%s): %s", resp.Status, answer.Error)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return sysexits.NoPerm, fmt.Errorf("refused by Caddy's admin endpoint (%s): %s", resp.Status, answer.Error)
	}
	return sysexits.Software, fmt.Errorf("unexpected answer %s: %s", resp.Status, answer.Error)
}

// defaultSender is the user's name at this host, as sendmail's default.
func defaultSender() string {
	name := "root"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + hostOr(host)
}

func hostOr(h string) string {
	if h == "" {
		return "localhost"
	}
	return h
}

// receivedHeader is the trace of the hand-over, as Postfix's pickup writes
// one.
func receivedHeader(host string) string {
	return fmt.Sprintf("Received: by %s (caddy sendmail, from userid %s);\r\n\t%s\r\n",
		hostOr(host), strconv.Itoa(os.Getuid()), time.Now().Format(time.RFC1123Z))
}

// readHeader reads the header section, up to and including the empty line
// that ends it (or the end of the input), bounded by maxHeader.
func readHeader(r *bufio.Reader, ignoreDots bool) ([]byte, error) {
	var out []byte
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A header line longer than the buffer: not a header.
			out = append(out, line...)
			return out, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading standard input: %w", err)
		}
		if !ignoreDots && (string(line) == ".\n" || string(line) == ".\r\n" || (err != nil && string(line) == ".")) {
			// The end of the message, in the headers.
			return out, nil
		}
		out = append(out, line...)
		if len(out) > maxHeader {
			return nil, fmt.Errorf("the header section is over %d bytes", maxHeader)
		}
		if err != nil || string(line) == "\n" || string(line) == "\r\n" {
			return out, nil
		}
	}
}

// header is a parsed header section, kept as its lines so that the
// message goes out as it came, but for the fields removed.
type header struct {
	fields []field
	// rest is what followed the fields (the empty line, or a body line
	// that is no header).
	rest []byte
}

type field struct {
	name string
	raw  []byte // the field with its continuation lines
}

func parseHeader(b []byte) (*header, error) {
	h := new(header)
	for len(b) > 0 {
		end := bytes.IndexByte(b, '\n') + 1
		if end == 0 {
			end = len(b)
		}
		line := b[:end]
		if (line[0] == ' ' || line[0] == '\t') && len(h.fields) > 0 {
			h.fields[len(h.fields)-1].raw = append(h.fields[len(h.fields)-1].raw, line...)
			b = b[end:]
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || bytes.ContainsAny(line[:colon], " \t") {
			h.rest = b
			return h, nil
		}
		h.fields = append(h.fields, field{name: string(line[:colon]), raw: append([]byte(nil), line...)})
		b = b[end:]
	}
	return h, nil
}

func (h *header) has(name string) bool { return len(h.values(name)) > 0 }

// values returns the unfolded values of the fields called name, decoded
// where they are MIME-encoded words.
func (h *header) values(name string) []string {
	var out []string
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			v := string(f.raw[len(f.name)+1:])
			v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
			if dec, err := new(mime.WordDecoder).DecodeHeader(v); err == nil {
				v = dec
			}
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

func (h *header) remove(name string) {
	kept := h.fields[:0]
	for _, f := range h.fields {
		if !strings.EqualFold(f.name, name) {
			kept = append(kept, f)
		}
	}
	h.fields = kept
}

func (h *header) bytes() []byte {
	var b bytes.Buffer
	for _, f := range h.fields {
		b.Write(f.raw)
	}
	b.Write(h.rest)
	return b.Bytes()
}

// dotReader passes the body on, stopping at a line with a single dot
// unless ignoreDots (sendmail's default, which -i and -oi turn off).
type dotReader struct {
	r          *bufio.Reader
	ignoreDots bool
	done       bool
	pending    []byte
	// midLine is true when the last piece read did not end a line.
	midLine bool
	// err is the error reading the input, returned once what was read
	// before it is passed on.
	err error
}

type dotReaderError struct{ err error }

func (e *dotReaderError) Error() string { return "reading standard input: " + e.err.Error() }
func (e *dotReaderError) Unwrap() error { return e.err }

// Read fills p with as many lines as are at hand (an HTTP client sends each
// Read as a chunk: a line at a time, a large message took hundreds of
// thousands of writes and seconds), blocking only when it has none.
func (d *dotReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(d.pending) == 0 {
			if d.done || d.err != nil || (n > 0 && d.r.Buffered() == 0) {
				break
			}
			d.next()
			continue
		}
		c := copy(p[n:], d.pending)
		d.pending = d.pending[c:]
		n += c
	}
	switch {
	case n > 0:
		return n, nil
	case d.err != nil:
		return 0, d.err
	default:
		return 0, io.EOF
	}
}

// next reads the next line into pending, or ends the body (done) at a
// single dot or the end of the input, or keeps the read error (err).
func (d *dotReader) next() {
	line, err := d.r.ReadSlice('\n')
	startsLine := !d.midLine
	d.midLine = errors.Is(err, bufio.ErrBufferFull)
	if d.midLine {
		err = nil
	} else if startsLine && !d.ignoreDots && (string(line) == ".\n" || string(line) == ".\r\n" || (errors.Is(err, io.EOF) && string(line) == ".")) {
		d.done = true
		return
	}
	d.pending = append(d.pending[:0], line...)
	if errors.Is(err, io.EOF) {
		d.done = true
	} else if err != nil {
		d.err = &dotReaderError{err: err}
	}
}
