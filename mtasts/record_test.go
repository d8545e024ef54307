package mtasts

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRecord(t *testing.T) {
	tests := []struct {
		txt string
		id  string // "" for a syntax error
	}{
		{"v=STSv1; id=20261122T000000;", "20261122T000000"},
		{"v=STSv1;id=abc", "abc"},
		{"v=STSv1 ; id=abc ;  ", "abc"},
		{"v=STSv1;\tid=abc\t;", "abc"},
		{"v=STSv1; ext=value; id=abc;", "abc"},
		{"v=STSv1; id=abc; x_y-z.w=!\"#$%&'()*+,-./0123456789:<>?@[]^`{|}~;", "abc"},
		{"v=STSv1; id=" + "12345678901234567890123456789012" + ";", "12345678901234567890123456789012"},
		{"v=STSv1; id=" + "123456789012345678901234567890123" + ";", ""},
		{"v=STSv1;", ""},
		{"v=STSv1", ""},
		{"v=STSv1; ext=1;", ""},
		{"v=STSv1; id=;", ""},
		{"v=STSv1; id=a-b;", ""},
		{"v=STSv1; id=a; id=b;", ""},
		{"v=STSv1; ID=abc;", ""},
		{"v=STSv1; id=abc;;", ""},
		{"v=STSv1; id=abc ext=1;", ""},
		{"v=STSv1; id=abc; ext;", ""},
		{"v=STSv1; id=abc; ext=a=b;", ""},
		{"v=STSv1; id=abc; _ext=1;", ""},
		{"v=stsv1; id=abc;", ""},
		{"id=abc; v=STSv1;", ""},
		{" v=STSv1; id=abc;", ""},
		{"v=STSv10; id=abc;", ""},
	}
	for _, tt := range tests {
		t.Run(tt.txt, func(t *testing.T) {
			rec, err := ParseRecord(tt.txt)
			if tt.id == "" {
				require.ErrorIs(t, err, ErrRecordSyntax)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.id, rec.ID)
		})
	}
}

func TestSelectRecord(t *testing.T) {
	tests := []struct {
		name    string
		records []string
		id      string
		err     error
	}{
		{"one", []string{"v=STSv1; id=a;"}, "a", nil},
		{"others discarded", []string{"v=spf1 -all", "v=STSv1; id=a;", "hello", "v=STSv10; id=b;"}, "a", nil},
		{"none", nil, "", ErrNoRecord},
		{"no STSv1 one", []string{"v=spf1 -all", "v=STSv2; id=a;"}, "", ErrNoRecord},
		{"two", []string{"v=STSv1; id=a;", "v=STSv1; id=b;"}, "", ErrMultipleRecords},
		{"two, one malformed", []string{"v=STSv1; id=a;", "v=STSv1; bad"}, "", ErrMultipleRecords},
		{"malformed", []string{"v=STSv1; id=a b;"}, "", ErrRecordSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := SelectRecord(tt.records)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.id, rec.ID)
		})
	}
}
