package l4submission

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestHeadersNeedUTF8(t *testing.T) {
	tests := []struct {
		msg  string
		want bool
	}{
		{"Subject: hi\r\n\r\nbody\r\n", false},
		{"Subject: hi\r\n\r\ncafé\r\n", false},
		{"Subject: café\r\n\r\nbody\r\n", true},
		{"From: José <j@example.org>\nSubject: x\n\nbody", true},
		{"Subject: x", false},
		{"", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, headersNeedUTF8(strings.NewReader(tt.msg), int64(len(tt.msg))), tt.msg)
	}
}
