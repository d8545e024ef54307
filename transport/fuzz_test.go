package transport

import (
	"bufio"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		name, in string
		want     Reply
		err      string
	}{
		{"simple", "250 OK\r\n", Reply{Code: 250, Lines: []string{"OK"}}, ""},
		{"enhanced", "550 5.1.1 no such user\r\n", Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{"no such user"}}, ""},
		{"multi-line enhanced", "451-4.3.0 one\r\n451 4.3.0 two\r\n", Reply{Code: 451, Enhanced: "4.3.0", Lines: []string{"one", "two"}}, ""},
		{"enhanced of another class is text", "250 5.1.1 odd\r\n", Reply{Code: 250, Lines: []string{"5.1.1 odd"}}, ""},
		{"enhanced on the first line only (Exim)", "550-5.7.1 a\r\n550-b\r\n550 c\r\n", Reply{Code: 550, Enhanced: "5.7.1", Lines: []string{"a", "b", "c"}}, ""},
		{"enhanced on the first line only, 2xx", "250-2.0.0 a\r\n250 b\r\n", Reply{Code: 250, Enhanced: "2.0.0", Lines: []string{"a", "b"}}, ""},
		{"another enhanced code on a later line is text", "550-5.7.1 a\r\n550 5.1.1 b\r\n", Reply{Code: 550, Enhanced: "5.7.1", Lines: []string{"a", "5.1.1 b"}}, ""},
		{"enhanced on a later line only is text", "550-a\r\n550 5.1.1 b\r\n", Reply{Code: 550, Lines: []string{"a", "5.1.1 b"}}, ""},
		{"cut line at EOF", "250 2.0.", Reply{}, `the reply was cut after "250 2.0.": unexpected EOF`},
		{"cut between lines", "250-a\r\n", Reply{}, `the reply was cut after "250-a\r\n": unexpected EOF`},
		{"bare code", "250\r\n", Reply{Code: 250, Lines: []string{""}}, ""},
		{"ehlo with empty keyword", "250-smtp-sink\r\n250-PIPELINING\r\n250 \r\n", Reply{Code: 250, Lines: []string{"smtp-sink", "PIPELINING", ""}}, ""},
		{"bare LF", "220 hi\n", Reply{Code: 220, Lines: []string{"hi"}}, ""},
		{"codes differ", "250-a\r\n251 b\r\n", Reply{}, "line 2 has code 251"},
		{"not a code", "abc def\r\n", Reply{}, "malformed reply"},
		{"bad separator", "250xOK\r\n", Reply{}, "malformed reply"},
		{"code out of range", "199 x\r\n", Reply{}, "out of range"},
		{"truncated", "250-more\r\n", Reply{}, "EOF"},
		{"too long", "250 " + strings.Repeat("x", 3000) + "\r\n", Reply{}, "longer than"},
		{"too many lines", strings.Repeat("250-x\r\n", 101) + "250 x\r\n", Reply{}, "more than 100 lines"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readReply(bufio.NewReader(strings.NewReader(tt.in)))
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseCapabilities(t *testing.T) {
	caps := ParseCapabilities([]string{"mx.example.test", "PIPELINING", "SIZE 10240000", "auth=LOGIN PLAIN", "AUTH CRAM-MD5", "8BITMIME", "", "  ", "chunking"})
	assert.True(t, caps.Has("PIPELINING"))
	assert.True(t, caps.Has("CHUNKING"), "keywords are case-insensitive")
	assert.Equal(t, int64(10240000), caps.Size())
	assert.Equal(t, []string{"LOGIN", "PLAIN", "CRAM-MD5"}, caps.AuthMechanisms())
	assert.False(t, caps.Has(""))
	assert.Zero(t, ParseCapabilities([]string{"x", "SIZE"}).Size())
	assert.Zero(t, ParseCapabilities([]string{"x", "SIZE -5"}).Size())
	assert.Zero(t, ParseCapabilities([]string{"x", "SIZE lots"}).Size())
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"250 OK\r\n", "550-5.1.1 a\r\n550 5.1.1 b\r\n", "250 \r\n", "2", "250-\n250 x\n", "421 4.7.0 bye\r\n", "250 2.0.", "550-5.7.1 a\r\n550 b\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		sr := strings.NewReader(in)
		br := bufio.NewReader(sr)
		rep, err := readReply(br)
		if err != nil {
			return
		}
		if used := len(in) - sr.Len() - br.Buffered(); used == 0 || in[used-1] != '\n' {
			t.Fatalf("a reply taken from %q, which does not end its line", in[:used])
		}
		if rep.Code < 200 || rep.Code > 599 {
			t.Fatalf("code %d accepted", rep.Code)
		}
		if len(rep.Lines) == 0 || len(rep.Lines) > maxReplyLines {
			t.Fatalf("%d lines", len(rep.Lines))
		}
		if rep.Enhanced != "" && (!isEnhanced(rep.Enhanced) || int(rep.Enhanced[0]-'0') != rep.Code/100) {
			t.Fatalf("enhanced code %q for %d", rep.Enhanced, rep.Code)
		}
		_ = rep.String()
	})
}

func FuzzParseCapabilities(f *testing.F) {
	f.Add("mx\nPIPELINING\nSIZE 100\nAUTH=PLAIN\n\n")
	f.Add("x\nSIZE 99999999999999999999\nauth")
	f.Fuzz(func(t *testing.T, in string) {
		caps := ParseCapabilities(strings.Split(in, "\n"))
		if caps.Size() < 0 {
			t.Fatal("negative size")
		}
		for kw := range caps {
			if kw == "" || kw != strings.ToUpper(kw) {
				t.Fatalf("keyword %q", kw)
			}
		}
		_ = caps.AuthMechanisms()
	})
}
