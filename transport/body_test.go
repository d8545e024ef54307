package transport

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNormalizer(t *testing.T) {
	tests := []struct {
		name, in, data, bdat string
	}{
		{"crlf kept", "a\r\nb\r\n", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"bare lf", "a\nb\n", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"bare cr", "a\rb\r", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"final line break added", "a\nb", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"empty body", "", "", ""},
		{"leading dot", ".a\n..b\nc.d\n", "..a\r\n...b\r\nc.d\r\n", ".a\r\n..b\r\nc.d\r\n"},
		{"lf dot lf cannot end data", "x\n.\ny\n", "x\r\n..\r\ny\r\n", "x\r\n.\r\ny\r\n"},
		{"cr dot cr cannot end data", "x\r.\ry\r", "x\r\n..\r\ny\r\n", "x\r\n.\r\ny\r\n"},
		{"crlf dot crlf cannot end data", "x\r\n.\r\ny", "x\r\n..\r\ny\r\n", "x\r\n.\r\ny\r\n"},
		{"lone dot body", ".", "..\r\n", ".\r\n"},
		{"cr cr lf", "a\r\r\nb", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"},
		{"8bit kept", "caf\xc3\xa9\n", "caf\xc3\xa9\r\n", "caf\xc3\xa9\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, stuff := range []bool{true, false} {
				want := tt.bdat
				if stuff {
					want = tt.data
				}
				// One byte at a time, so that CR LF split across reads is seen.
				got, err := io.ReadAll(newNormalizer(iotest.OneByteReader(strings.NewReader(tt.in)), stuff))
				require.NoError(t, err)
				assert.Equal(t, want, string(got), "dot-stuffing %v", stuff)
			}
		})
	}
}

func TestNormalizerNoBareLineBreaks(t *testing.T) {
	in := strings.Repeat("a\rb\nc\r\n\n\r.\r", 5000)
	got, err := io.ReadAll(newNormalizer(strings.NewReader(in), true))
	require.NoError(t, err)
	for i := range got {
		switch got[i] {
		case '\r':
			require.True(t, i+1 < len(got) && got[i+1] == '\n', "bare CR at %d", i)
		case '\n':
			require.True(t, i > 0 && got[i-1] == '\r', "bare LF at %d", i)
		}
	}
	assert.NotContains(t, string(got), "\r\n.\r\n")
}

func FuzzNormalizer(f *testing.F) {
	for _, s := range []string{"a\n.\nb", "\r.\r", ".\r\n", "x\r\r\n.", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := io.ReadAll(newNormalizer(strings.NewReader(in), true))
		if err != nil {
			t.Fatal(err)
		}
		s := string(got)
		if strings.Contains(s, "\r\n.\r\n") || strings.HasPrefix(s, ".\r\n") {
			t.Fatalf("body %q can end DATA early: %q", in, s)
		}
		for i := range got {
			if got[i] == '\n' && (i == 0 || got[i-1] != '\r') {
				t.Fatalf("bare LF in %q", s)
			}
			if got[i] == '\r' && (i+1 == len(got) || got[i+1] != '\n') {
				t.Fatalf("bare CR in %q", s)
			}
		}
		if len(got) > 0 && !strings.HasSuffix(s, "\r\n") {
			t.Fatalf("no final CRLF in %q", s)
		}
	})
}

// FuzzWireSize: WireSize counts exactly what the normalizer writes without
// dot-stuffing, whatever the body and however it is split into reads.
func FuzzWireSize(f *testing.F) {
	for _, s := range []string{"", "a", "a\r", "a\n", "a\r\n", "\r\n", "\r", "\n\r", "x\r\r\n\n.\r\ny", "line\nlast"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		want, err := io.Copy(io.Discard, newNormalizer(strings.NewReader(body), false))
		require.NoError(t, err)
		// One byte per read: a CRLF split across two writes is one.
		got, err := wireSize(iotest.OneByteReader(strings.NewReader(body)), make([]byte, 16))
		require.NoError(t, err)
		require.Equal(t, want, got, "%q", body)
		got, err = WireSize(strings.NewReader(body))
		require.NoError(t, err)
		require.Equal(t, want, got, "%q", body)
	})
}
