package tlsrpt

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRecord(t *testing.T) {
	r := NewRecord()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			r.Success("example.org", PolicySTS)
			r.Failure("example.org", PolicySTS, CertificateNotTrusted)
		})
	}
	wg.Wait()
	r.Failure("dane.example", PolicyTLSA, TLSAInvalid)
	got := r.Summaries()
	assert.Len(t, got, 2)
	assert.Equal(t, "dane.example", got[0].Domain)
	assert.Equal(t, map[string]int{TLSAInvalid: 1}, got[0].Failures)
	assert.Equal(t, 10, got[1].Success)
	assert.Equal(t, 10, got[1].Failures[CertificateNotTrusted])
	got[1].Failures[CertificateNotTrusted] = 99
	assert.Equal(t, 10, r.Summaries()[1].Failures[CertificateNotTrusted], "a copy")
}
