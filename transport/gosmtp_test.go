package transport

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
)

// goSMTP is a go-smtp server on loopback that records, for each message,
// the SIZE= the client declared and the octets it read.
type goSMTP struct {
	addr string
	mu   sync.Mutex
	got  []sizeSeen
}

type sizeSeen struct{ declared, read int64 }

func (g *goSMTP) sizes() []sizeSeen {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]sizeSeen(nil), g.got...)
}

func startGoSMTP(t *testing.T) *goSMTP {
	t.Helper()
	g := &goSMTP{}
	s := smtp.NewServer(g)
	s.Domain = "gosmtp.example.net"
	s.MaxMessageBytes = 1 << 20
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	g.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close(); <-done })
	return g
}

func (g *goSMTP) NewSession(*smtp.Conn) (smtp.Session, error) { return &goSMTPSession{g: g}, nil }

type goSMTPSession struct {
	g    *goSMTP
	size int64
}

func (s *goSMTPSession) Reset()        { s.size = 0 }
func (s *goSMTPSession) Logout() error { return nil }
func (s *goSMTPSession) Mail(_ string, o *smtp.MailOptions) error {
	s.size = -1
	if o != nil {
		s.size = o.Size
	}
	return nil
}
func (s *goSMTPSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *goSMTPSession) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	s.g.mu.Lock()
	s.g.got = append(s.g.got, sizeSeen{declared: s.size, read: n})
	s.g.mu.Unlock()
	return nil
}
