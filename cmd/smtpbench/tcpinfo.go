package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file reads the kernel's counters of TCP connections (struct
// tcp_info, through the sock_diag netlink interface, as `ss -ti` does),
// to tell what Caddy's connections to PostgreSQL carried without putting
// anything between them. Written here since no library in go.mod speaks
// inet_diag, and the request is two small structs.

// connStats are one connection's counters, from the client's side.
type connStats struct {
	bytesSent, bytesReceived uint64 // payload bytes (tcpi_bytes_sent, tcpi_bytes_received)
	segsSent, segsReceived   uint64 // segments carrying data (tcpi_data_segs_out, tcpi_data_segs_in)
}

func (c connStats) sub(o connStats) connStats {
	return connStats{c.bytesSent - o.bytesSent, c.bytesReceived - o.bytesReceived, c.segsSent - o.segsSent, c.segsReceived - o.segsReceived}
}

func (c connStats) add(o connStats) connStats {
	return connStats{c.bytesSent + o.bytesSent, c.bytesReceived + o.bytesReceived, c.segsSent + o.segsSent, c.segsReceived + o.segsReceived}
}

// inetDiagReqV2 is struct inet_diag_req_v2 (linux/inet_diag.h).
type inetDiagReqV2 struct {
	Family, Protocol, Ext, Pad uint8
	States                     uint32
	ID                         inetDiagSockID
}

// inetDiagSockID is struct inet_diag_sockid; ports are big-endian.
type inetDiagSockID struct {
	SPort, DPort [2]byte
	Src, Dst     [16]byte
	If           uint32
	Cookie       [2]uint32
}

const (
	inetDiagInfo    = 2  // INET_DIAG_INFO: the tcp_info attribute
	inetDiagMsgSize = 72 // struct inet_diag_msg
)

// tcpConns returns the counters of the IPv4 TCP connections to
// 127.0.0.1:port whose sockets the processes pids hold, by socket inode.
func tcpConns(port int, pids []int) (map[uint32]connStats, error) {
	mine := map[uint32]bool{}
	for _, pid := range pids {
		for _, ino := range socketInodes(pid) {
			mine[ino] = true
		}
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(5e9)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	req := inetDiagReqV2{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, Ext: 1 << (inetDiagInfo - 1), States: ^uint32(0)}
	var body bytes.Buffer
	_ = binary.Write(&body, binary.NativeEndian, req)
	hdr := unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr + body.Len()), Type: unix.SOCK_DIAG_BY_FAMILY,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP, Seq: 1}
	var msg bytes.Buffer
	_ = binary.Write(&msg, binary.NativeEndian, hdr)
	msg.Write(body.Bytes())
	if err := unix.Sendto(fd, msg.Bytes(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	out := map[uint32]connStats{}
	buf := make([]byte, 1<<16)
	for range 100000 { // a bound: one reply per socket on the machine, many per read
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
						return nil, fmt.Errorf("sock_diag: %w", syscall.Errno(-e))
					}
				}
				return nil, fmt.Errorf("sock_diag: error reply")
			}
			if len(m.Data) < inetDiagMsgSize {
				continue
			}
			dport := int(binary.BigEndian.Uint16(m.Data[6:8]))
			ino := binary.NativeEndian.Uint32(m.Data[68:72])
			if dport != port || !mine[ino] {
				continue
			}
			if info, ok := tcpInfoAttr(m.Data[inetDiagMsgSize:]); ok {
				out[ino] = connStats{bytesSent: info.Bytes_sent, bytesReceived: info.Bytes_received,
					segsSent: uint64(info.Data_segs_out), segsReceived: uint64(info.Data_segs_in)}
			}
		}
	}
	return nil, fmt.Errorf("sock_diag: no end of the dump")
}

// tcpInfoAttr finds the INET_DIAG_INFO attribute among the reply's
// attributes (struct rtattr: length, type, data padded to 4 bytes).
func tcpInfoAttr(b []byte) (unix.TCPInfo, bool) {
	var info unix.TCPInfo
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < 4 || l > len(b) {
			break
		}
		if typ == inetDiagInfo {
			// The kernel's struct, in the machine's layout (padding
			// included, so not encoding/binary), may be shorter (older) or
			// longer (newer) than this one: copy what both have.
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&info)), unsafe.Sizeof(info)), b[4:l])
			return info, true
		}
		b = b[min(len(b), (l+3)&^3):]
	}
	return info, false
}

// socketInodes lists the inodes of the sockets process pid holds.
func socketInodes(pid int) []uint32 {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []uint32
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		if rest, ok := strings.CutPrefix(link, "socket:["); ok {
			if v, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 32); err == nil {
				out = append(out, uint32(v))
			}
		}
	}
	return out
}

// connDelta sums what the connections carried between two readings. A
// connection opened meanwhile counts from zero; one closed meanwhile is
// lost, and counted in closed.
func connDelta(before, after map[uint32]connStats) (sum connStats, conns, closed int) {
	for ino, a := range after {
		sum = sum.add(a.sub(before[ino]))
	}
	for ino := range before {
		if _, ok := after[ino]; !ok {
			closed++
		}
	}
	return sum, len(after), closed
}
