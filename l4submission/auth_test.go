package l4submission

import (
	"encoding/base64"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

func TestAuthenticator(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	require.NoError(t, err)
	t.Setenv("L4SUBMISSION_TEST_USER", "carol")
	h := &Handler{Users: []User{
		{Username: "alice", Password: string(hash)},
		{Username: "bob", Password: base64.StdEncoding.EncodeToString(hash)},
		{Username: "{env.L4SUBMISSION_TEST_USER}", Password: string(hash)},
	}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	a, err := newAuthenticator(ctx, h)
	require.NoError(t, err)

	tests := []struct {
		user, password string
		want           error
	}{
		{"alice", "s3cret", nil},
		{"bob", "s3cret", nil},
		{"carol", "s3cret", nil},
		{"alice", "wrong", smtp.ErrAuthFailed},
		{"Alice", "s3cret", smtp.ErrAuthFailed},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, a.check(tt.user, tt.password), "%s/%s", tt.user, tt.password)
	}
}

func TestLoginServer(t *testing.T) {
	var got [2]string
	auth := func(u, p string) error { got = [2]string{u, p}; return nil }

	s, err := saslServer(mechLogin, auth)
	require.NoError(t, err)
	ch, done, err := s.Next(nil)
	require.NoError(t, err)
	assert.Equal(t, "Username:", string(ch))
	assert.False(t, done)
	ch, done, err = s.Next([]byte("alice"))
	require.NoError(t, err)
	assert.Equal(t, "Password:", string(ch))
	assert.False(t, done)
	_, done, err = s.Next([]byte("pw"))
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, [2]string{"alice", "pw"}, got)
	_, _, err = s.Next([]byte("more"))
	assert.Error(t, err)

	// AUTH LOGIN with the username as its initial response.
	s, err = saslServer(mechLogin, auth)
	require.NoError(t, err)
	ch, _, err = s.Next([]byte("bob"))
	require.NoError(t, err)
	assert.Equal(t, "Password:", string(ch))
	_, done, err = s.Next([]byte("pw2"))
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, [2]string{"bob", "pw2"}, got)

	_, err = saslServer("CRAM-MD5", auth)
	assert.Equal(t, smtp.ErrAuthUnknownMechanism, err)
}

func TestPlainServerIdentity(t *testing.T) {
	s, err := saslServer(mechPlain, func(u, p string) error { return nil })
	require.NoError(t, err)
	_, _, err = s.Next([]byte("mallory\x00alice\x00pw"))
	assert.ErrorContains(t, err, "authorization identity must be the username")

	s, err = saslServer(mechPlain, func(u, p string) error { return nil })
	require.NoError(t, err)
	_, done, err := s.Next([]byte("alice\x00alice\x00pw"))
	assert.NoError(t, err)
	assert.True(t, done)
}
