package main

// A client with no socket (-client tun): the BPF target is per
// accepted connection on the server side, but a kernel client on the same
// machine runs the same tracepoints for its own socket (inet_sock_set_state
// fires for the client's SYN_SENT, ESTABLISHED and CLOSE: about 3 of the
// ~6.4 runs per connection). On a real node the clients are elsewhere.
// This client speaks TCP from user space through a TUN device in the
// server's namespace: it writes the SYN and the final ACK as packets the
// server's kernel receives, and reads the server's SYN-ACK and RST from the
// device, so the only sockets on the machine are the server's.
//
// It is stateless: the ACK is computed from the SYN-ACK alone (seq = its
// ack, ack = its seq + 1), so any packet can be answered whenever it comes.
// Closed loop: a window of connections in flight, each replaced when the
// server's RST (accept, then close with SO_LINGER 0) ends it.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/listenwatch/listenwatch/internal/netnstest"
	"golang.org/x/sys/unix"
)

const (
	tunName = "lwbtun"
	// Client addresses: routed to the TUN device in the server's namespace.
	tunNet = "10.78.0.0/16"
)

type tunClient struct {
	fd     int
	dst    [4]byte
	dport  uint16
	window int

	next     atomic.Uint64 // connections started: picks the client's address and port
	active   atomic.Bool   // closed loop on: an RST starts the next connection
	inflight atomic.Int64
	ends     atomic.Int64 // RSTs seen from the server
	closed   chan struct{}
	wg       sync.WaitGroup
	werr     atomic.Pointer[error] // the first failed write or read
}

// newTUNClient makes the TUN device in ns, routes the client network to it
// and starts the reader, which answers every SYN-ACK from then on.
func newTUNClient(ns *netnstest.NS, serverAddr string, window int) (*tunClient, error) {
	ap, err := netip.ParseAddrPort(serverAddr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("-client tun: the server address %q is not IPv4 address:port", serverAddr)
	}
	c := &tunClient{dst: ap.Addr().As4(), dport: ap.Port(), window: window, closed: make(chan struct{})}
	// The device belongs to the namespace of the task that opens it.
	err = ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(tunName)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", tunName, err)
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", ns.Name, "link", "set", tunName, "up"},
		{"-n", ns.Name, "route", "add", tunNet, "dev", tunName},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			unix.Close(c.fd)
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	c.wg.Add(2)
	go c.reader()
	go c.watchdog()
	return c, nil
}

// close stops the reader and removes the device (closing its only fd).
func (c *tunClient) close() {
	c.active.Store(false)
	close(c.closed)
	c.wg.Wait()
	unix.Close(c.fd)
}

// start turns the closed loop on: window connections in flight.
func (c *tunClient) start() {
	c.inflight.Store(0)
	c.active.Store(true)
	c.fill()
}

// stop turns it off; connections in flight still complete (the reader
// keeps answering).
func (c *tunClient) stop() { c.active.Store(false) }

func (c *tunClient) fill() {
	var buf [44]byte
	for c.active.Load() && c.inflight.Load() < int64(c.window) {
		c.inflight.Add(1)
		c.syn(buf[:])
	}
}

// err is the first failed write, if any.
func (c *tunClient) err() error {
	if e := c.werr.Load(); e != nil {
		return *e
	}
	return nil
}

// syn writes a new connection's SYN. The n-th connection comes from
// 10.78.0.0 + n%65534 + 1, port 1024 + (n/65534)%60000: no 4-tuple is
// reused within 3.9 billion connections.
func (c *tunClient) syn(buf []byte) {
	n := c.next.Add(1)
	src := [4]byte{10, 78, byte((n%65534 + 1) >> 8), byte(n%65534 + 1)}
	sport := uint16(1024 + (n/65534)%60000)
	pkt := buildTCP(buf, src, c.dst, sport, c.dport, 1000, 0, tcpSYN, true)
	c.write(pkt)
}

func (c *tunClient) write(pkt []byte) {
	if _, err := unix.Write(c.fd, pkt); err != nil {
		e := fmt.Errorf("write to %s: %w", tunName, err)
		c.werr.CompareAndSwap(nil, &e)
	}
}

// reader answers the server: ACK for a SYN-ACK, and an RST (the server
// accepted and closed) ends a connection, which starts the next one while
// the loop is on.
func (c *tunClient) reader() {
	defer c.wg.Done()
	buf := make([]byte, 2048)
	out := make([]byte, 44)
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	for {
		select {
		case <-c.closed:
			return
		default:
		}
		// A timeout so that close is noticed.
		if n, err := unix.Poll(fds, 100); err != nil || n == 0 {
			continue
		}
		n, err := unix.Read(c.fd, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			e := fmt.Errorf("read from %s: %w", tunName, err)
			c.werr.CompareAndSwap(nil, &e)
			return
		}
		p, ok := parseTCP(buf[:n])
		if !ok {
			continue
		}
		switch {
		case p.flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
			c.write(buildTCP(out, p.dst, p.src, p.dport, p.sport, p.ack, p.seq+1, tcpACK, false))
		case p.flags&tcpRST != 0:
			c.ends.Add(1)
			c.inflight.Add(-1)
			c.fill()
		}
	}
}

// watchdog refills the window when nothing ended for 200 ms while the loop
// is on: a connection that never got its RST (a SYN the server dropped)
// must not shrink the window for good.
func (c *tunClient) watchdog() {
	defer c.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	last := c.ends.Load()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		now := c.ends.Load()
		if now == last && c.active.Load() {
			c.inflight.Store(0)
			c.fill()
		}
		last = now
	}
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

type tcpPacket struct {
	src, dst     [4]byte
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
}

// parseTCP reads an IPv4 TCP packet's addresses, ports, numbers and flags.
func parseTCP(b []byte) (tcpPacket, bool) {
	var p tcpPacket
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != unix.IPPROTO_TCP {
		return p, false
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl+20 {
		return p, false
	}
	copy(p.src[:], b[12:16])
	copy(p.dst[:], b[16:20])
	t := b[ihl:]
	p.sport = binary.BigEndian.Uint16(t[0:2])
	p.dport = binary.BigEndian.Uint16(t[2:4])
	p.seq = binary.BigEndian.Uint32(t[4:8])
	p.ack = binary.BigEndian.Uint32(t[8:12])
	p.flags = t[13]
	return p, true
}

// buildTCP writes an IPv4 TCP packet without payload into buf (44 bytes
// with the MSS option a SYN carries, 40 without) and returns it. The
// checksums are computed: a TUN device hands the packet to the stack as
// received from a wire, and TCP verifies it.
func buildTCP(buf []byte, src, dst [4]byte, sport, dport uint16, seq, ack uint32, flags uint8, mss bool) []byte {
	thl := 20
	if mss {
		thl = 24
	}
	total := 20 + thl
	b := buf[:total]
	clear(b)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(total))
	b[6] = 0x40 // don't fragment
	b[8] = 64
	b[9] = unix.IPPROTO_TCP
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	binary.BigEndian.PutUint16(b[10:12], ^csumFold(csumAdd(0, b[:20])))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:2], sport)
	binary.BigEndian.PutUint16(t[2:4], dport)
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = byte(thl/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 65535)
	if mss {
		t[20], t[21] = 2, 4
		binary.BigEndian.PutUint16(t[22:24], 1460)
	}
	// Pseudo-header: addresses, protocol, TCP length.
	s := csumAdd(0, b[12:20])
	s += uint32(unix.IPPROTO_TCP) + uint32(thl)
	s = csumAdd(s, t)
	binary.BigEndian.PutUint16(t[16:18], ^csumFold(s))
	return b
}

func csumAdd(s uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func csumFold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
