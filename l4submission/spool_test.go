package l4submission

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSpool(t *testing.T) {
	tests := []struct {
		name     string
		chunks   [][]byte
		inFile   bool
		eightBit bool
	}{
		{"small, 7-bit", [][]byte{[]byte("Subject: a\r\n\r\nb\r\n")}, false, false},
		{"small, 8-bit", [][]byte{[]byte("Subject: \xc3\xa9\r\n\r\n")}, false, true},
		{"at the memory limit", [][]byte{bytes.Repeat([]byte("a"), spoolMemory)}, false, false},
		{"past it in one write", [][]byte{bytes.Repeat([]byte("a"), spoolMemory+1)}, true, false},
		{"past it in two", [][]byte{bytes.Repeat([]byte("a"), spoolMemory-10), bytes.Repeat([]byte("b\xff"), 100)}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s spool
			var want []byte
			for _, c := range tt.chunks {
				n, err := s.Write(c)
				require.NoError(t, err)
				require.Equal(t, len(c), n)
				want = append(want, c...)
			}
			assert.Equal(t, int64(len(want)), s.Size())
			assert.Equal(t, tt.eightBit, s.eightBit)
			assert.Equal(t, tt.inFile, s.file != nil)
			got, err := io.ReadAll(io.NewSectionReader(s.ReaderAt(), 0, s.Size()))
			require.NoError(t, err)
			assert.Equal(t, want, got)
			var name string
			if s.file != nil {
				name = s.file.Name()
			}
			require.NoError(t, s.Close())
			if name != "" {
				_, err := os.Stat(name)
				assert.True(t, os.IsNotExist(err), "the file is removed")
			}
		})
	}
}
