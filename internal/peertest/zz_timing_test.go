package peertest

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"testing"
	"time"
)

func TestZZTiming(t *testing.T) {
	p := StartPostfix(t, PostfixOptions{Users: map[string]string{"alice": "pw"}})
	c, err := net.Dial("unix", p.SASLSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "VERSION\t1\t2\nCPID\t4242\n")
	r := bufio.NewReader(c)
	for {
		l, _ := r.ReadString('\n')
		if l == "DONE\n" {
			break
		}
	}
	for i, cred := range []string{"\x00alice\x00pw", "\x00alice\x00bad", "\x00nobody\x00bad", "\x00alice\x00pw"} {
		s := time.Now()
		fmt.Fprintf(c, "AUTH\t%d\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tresp=%s\n", i+1, base64.StdEncoding.EncodeToString([]byte(cred)))
		l, _ := r.ReadString('\n')
		t.Logf("%q %v %q", cred, time.Since(s), l)
	}
	t.Log(readFile(p.Dir + "/sasl/dovecot.log"))
}
