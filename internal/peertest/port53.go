package peertest

import (
	"fmt"
	"net"
	"sync"
	"testing"
)

var (
	port53Mu sync.Mutex
	// port53Taken are the addresses this process's tests hold.
	port53Taken = map[string]bool{}
)

// Port53Address returns a loopback address among PREFIX.53 to PREFIX.62
// (prefix is three octets, such as "127.88.15") whose port 53 is free, UDP
// and TCP, and that no other test of this process holds; it is given back
// when the test ends. For peers that only speak DNS on port 53 (the C
// library's resolver, which opendkim uses).
func Port53Address(t testing.TB, prefix string) string {
	t.Helper()
	port53Mu.Lock()
	defer port53Mu.Unlock()
	for i := 53; i < 63; i++ {
		addr := fmt.Sprintf("%s.%d", prefix, i)
		if port53Taken[addr] {
			continue
		}
		l, err := net.Listen("tcp4", addr+":53")
		if err != nil {
			continue
		}
		p, err := net.ListenPacket("udp4", addr+":53")
		l.Close()
		if err != nil {
			continue
		}
		p.Close()
		port53Taken[addr] = true
		t.Cleanup(func() {
			port53Mu.Lock()
			delete(port53Taken, addr)
			port53Mu.Unlock()
		})
		return addr
	}
	t.Fatalf("no loopback address %s.53-62 with port 53 free", prefix)
	return ""
}
