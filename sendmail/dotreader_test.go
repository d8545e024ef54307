package sendmail

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDotReader(t *testing.T) {
	long := strings.Repeat("x", 70<<10) + "\n" // longer than the reader's buffer
	for _, c := range []struct {
		name, in, want string
		ignoreDots     bool
	}{
		{"ends at EOF", "a\nb\n", "a\nb\n", false},
		{"stops at a dot line", "a\n.\nafter\n", "a\n", false},
		{"stops at a dot line with CRLF", "a\r\n.\r\nafter\r\n", "a\r\n", false},
		{"a dot at EOF", "a\n.", "a\n", false},
		{"-i keeps dot lines", "a\n.\nafter\n", "a\n.\nafter\n", true},
		{"a dot inside a line", "a.\n..\n x.\n", "a.\n..\n x.\n", false},
		{"no newline at EOF", "a\nb", "a\nb", false},
		{"a line longer than the buffer, then a dot", long + ".\nafter\n", long, false},
		{"a long line ending in a dot is not a dot line", strings.Repeat("y", 70<<10) + ".\n.\n", strings.Repeat("y", 70<<10) + ".\n", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &dotReader{r: bufio.NewReaderSize(strings.NewReader(c.in), 64<<10), ignoreDots: c.ignoreDots}
			got, err := io.ReadAll(d)
			require.NoError(t, err)
			assert.Equal(t, c.want, string(got))
			// The same a byte at a time from the input.
			d = &dotReader{r: bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(c.in)), 64<<10), ignoreDots: c.ignoreDots}
			got, err = io.ReadAll(d)
			require.NoError(t, err)
			assert.Equal(t, c.want, string(got))
		})
	}
}

// TestDotReaderFillsReads: a read gets as many lines as are at hand, not
// one (the HTTP client sends each read as a chunk of its own).
func TestDotReaderFillsReads(t *testing.T) {
	in := strings.Repeat(strings.Repeat("z", 76)+"\r\n", 1<<20/78) // 1 MiB of short lines
	d := &dotReader{r: bufio.NewReaderSize(strings.NewReader(in), 64<<10)}
	buf := make([]byte, 32<<10)
	reads, total := 0, 0
	for {
		n, err := d.Read(buf)
		total += n
		if n > 0 {
			reads++
		}
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	assert.Equal(t, len(in), total)
	assert.LessOrEqual(t, reads, 2*len(in)/len(buf)+2, "reads of 32 KiB, not of a line")
}

// TestDotReaderError: what was read before an input error is passed on,
// then the error.
func TestDotReaderError(t *testing.T) {
	boom := errors.New("boom")
	d := &dotReader{r: bufio.NewReaderSize(io.MultiReader(strings.NewReader("a\nb\n"), iotest.ErrReader(boom)), 64<<10)}
	got, err := io.ReadAll(d)
	assert.Equal(t, "a\nb\n", string(got))
	require.ErrorIs(t, err, boom)
	var de *dotReaderError
	assert.ErrorAs(t, err, &de)
}
