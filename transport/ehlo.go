package transport

import (
	"strconv"
	"strings"
)

// Capabilities are the ESMTP extensions a server announced in its EHLO (or
// LHLO) reply: keyword (upper case) -> parameters.
type Capabilities map[string][]string

// ParseCapabilities reads the lines of an EHLO reply (the first is the
// greeting name and is skipped). An empty line, as smtp-sink's last one,
// is ignored.
func ParseCapabilities(lines []string) Capabilities {
	caps := Capabilities{}
	for i, l := range lines {
		if i == 0 {
			continue
		}
		fields := strings.Fields(l)
		if len(fields) == 0 {
			continue
		}
		kw := strings.ToUpper(fields[0])
		// "AUTH=LOGIN PLAIN" is an old form of "AUTH LOGIN PLAIN".
		if name, arg, ok := strings.Cut(kw, "="); ok && name == "AUTH" {
			caps["AUTH"] = append(caps["AUTH"], append([]string{arg}, fields[1:]...)...)
			continue
		}
		caps[kw] = append(caps[kw], fields[1:]...)
	}
	return caps
}

// Has reports whether the server announced kw.
func (c Capabilities) Has(kw string) bool {
	_, ok := c[kw]
	return ok
}

// Size returns the SIZE limit (RFC 1870), 0 when none was announced or it
// is 0 (no limit).
func (c Capabilities) Size() int64 {
	p := c["SIZE"]
	if len(p) == 0 {
		return 0
	}
	n, err := strconv.ParseInt(p[0], 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// AuthMechanisms returns the SASL mechanisms announced, upper case.
func (c Capabilities) AuthMechanisms() []string {
	out := make([]string, 0, len(c["AUTH"]))
	for _, m := range c["AUTH"] {
		out = append(out, strings.ToUpper(m))
	}
	return out
}
