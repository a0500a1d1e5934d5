package main

import "testing"

// sums is the one's-complement sum of the IP header and of the TCP segment
// with its pseudo-header: both 0xffff for a packet the kernel accepts.
func sums(b []byte) (ip, tcp uint16) {
	ihl := int(b[0]&0x0f) * 4
	ip = csumFold(csumAdd(0, b[:ihl]))
	s := csumAdd(0, b[12:20])
	s += 6 + uint32(len(b)-ihl)
	tcp = csumFold(csumAdd(s, b[ihl:]))
	return ip, tcp
}

func TestBuildTCPChecksumsAndParse(t *testing.T) {
	buf := make([]byte, 44)
	src, dst := [4]byte{10, 78, 1, 2}, [4]byte{10, 77, 0, 1}
	for _, tc := range []struct {
		flags uint8
		mss   bool
		size  int
	}{{tcpSYN, true, 44}, {tcpACK, false, 40}, {tcpSYN | tcpACK, false, 40}} {
		b := buildTCP(buf, src, dst, 40001, 8080, 0xfffffff0, 12345, tc.flags, tc.mss)
		if len(b) != tc.size {
			t.Fatalf("flags %#x: %d bytes, want %d", tc.flags, len(b), tc.size)
		}
		if ip, tcp := sums(b); ip != 0xffff || tcp != 0xffff {
			t.Fatalf("flags %#x: checksums do not verify: ip %#x tcp %#x", tc.flags, ip, tcp)
		}
		p, ok := parseTCP(b)
		if !ok {
			t.Fatalf("flags %#x: not parsed", tc.flags)
		}
		want := tcpPacket{src: src, dst: dst, sport: 40001, dport: 8080, seq: 0xfffffff0, ack: 12345, flags: tc.flags}
		if p != want {
			t.Fatalf("parsed %+v, want %+v", p, want)
		}
	}
	// An odd-length sum (the TCP length is even here; the helper must
	// still count a last byte).
	if csumFold(csumAdd(0, []byte{0x01})) != 0x0100 {
		t.Fatal("odd trailing byte not summed as the high byte")
	}
}

func TestParseTCPRejects(t *testing.T) {
	b := buildTCP(make([]byte, 44), [4]byte{1, 2, 3, 4}, [4]byte{5, 6, 7, 8}, 1, 2, 3, 4, tcpSYN, false)
	udp := append([]byte(nil), b...)
	udp[9] = 17
	v6 := append([]byte(nil), b...)
	v6[0] = 0x60
	for name, p := range map[string][]byte{"short": b[:30], "udp": udp, "ipv6": v6, "bad ihl": append([]byte{0x44}, b[1:]...)} {
		if _, ok := parseTCP(p); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}
