package peertest

import (
	"crypto/tls"
	"net"
	"net/smtp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPostfixAsMX runs Postfix on port 25 of its own loopback address, as
// an MX host, with a certificate for its name.
func TestPostfixAsMX(t *testing.T) {
	p := StartPostfix(t, PostfixOptions{Addr: "127.86.0.99", Port: 25, Hostname: "mx.as-mx.test"})
	assert.Equal(t, "127.86.0.99:25", p.SMTPAddr)
	conn, err := net.DialTimeout("tcp", p.SMTPAddr, 5*time.Second)
	require.NoError(t, err)
	c, err := smtp.NewClient(conn, "mx.as-mx.test")
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.StartTLS(&tls.Config{ServerName: "mx.as-mx.test", RootCAs: p.CA.Pool()}))
	require.NoError(t, c.Quit())
}
