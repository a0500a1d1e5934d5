// Package events holds the domain types of listenwatch: a listener's
// identity and the timeline of one accepted connection, with the rules that
// decide which of its latencies are real.
package events

import (
	"fmt"
	"net/netip"
	"time"
)

// ListenerKey identifies a listener the way an SRE names it: network
// namespace (inode), local address and port. Sockets of one SO_REUSEPORT
// group share a key. It is comparable, so it keys Go maps without
// allocating.
type ListenerKey struct {
	Netns uint32
	Addr  netip.Addr
	Port  uint16
}

func (k ListenerKey) String() string {
	return fmt.Sprintf("%s (netns %d)", netip.AddrPortFrom(k.Addr, k.Port), k.Netns)
}

// Flags say where each timestamp of a Conn came from.
type Flags uint32

// Values mirror enum lw_flag in bpf/listenwatch.h; loader checks at init
// that the generated constants agree.
const (
	// SYN time exact: the request sock's SYN-ACK send time.
	FlagSYNExact Flags = 1 << 0
	// SYN time derived as handshake time minus srtt/8 (no retransmit).
	FlagSYNFromRTT Flags = 1 << 1
	// SYN time derived from total_rto_time (SYN-ACK retransmitted): ms precision.
	FlagSYNFromRTO Flags = 1 << 2
	// The child came from a SYN cookie: the SYN time is unknowable.
	FlagCookie Flags = 1 << 3
	// The handshake stage was seen for this socket.
	FlagHandshake Flags = 1 << 4
	// No listener matched in the registry.
	FlagNoListener Flags = 1 << 5
)

// Conn is one accepted connection's timeline. Times are CLOCK_MONOTONIC
// offsets as the kernel reported them; zero means the stage was not seen
// (the agent started after it, or the socket came from a SYN cookie).
type Conn struct {
	Listener ListenerKey
	Client   netip.AddrPort
	PID      uint32
	Flags    Flags
	// SYNACKSent is when the listener answered the SYN: the start of
	// every latency (the SYN itself arrived just before, in the same
	// softirq).
	SYNACKSent  time.Duration
	Established time.Duration
	Accepted    time.Duration
	// AcceptQueueLen is the listener's accept-queue length when this
	// connection was queued, itself included; 0 when unknown.
	AcceptQueueLen uint32
}

// Kind says what a record from the kernel is.
type Kind uint8

// Values mirror enum lw_kind; the loader checks them.
const (
	KindAccept Kind = iota // a connection returned by accept(): a Conn
	KindDrop               // a refused connection attempt: a Drop
)

// Drop is one refused connection attempt (or several at the same instant
// on one socket), as the kernel reported it. Drop records are rate-limited
// per listener in the kernel (DropRecordsPerSecond); the listener's
// counters stay exact, and Listener.DropsUnreported counts what was not
// sent as a record.
type Drop struct {
	Listener ListenerKey
	// Client is the address the attempt came from; the zero AddrPort when
	// the hook could not see it (kretprobe mode at SYN time).
	Client netip.AddrPort
	Reason DropReason
	Count  uint32        // drops this record stands for, at least 1
	At     time.Duration // CLOCK_MONOTONIC
	// AcceptQueueLen is the listener socket's accept-queue length at the
	// drop; 0 when unknown.
	AcceptQueueLen uint32
}

// DropRecordsPerSecond bounds the drop records a listener sends per second
// (the kernel's LW_DROP_EVENTS_PER_SEC; the loader checks they agree).
const DropRecordsPerSecond = 100

// Missing names the first stage of a connection's timeline that is not
// known, which is why some of its latencies are not reported.
type Missing uint8

const (
	MissingNone      Missing = iota
	MissingSYN               // SYN time unknown: cookie, or SYN before the agent started
	MissingHandshake         // handshake before the agent started, or the record was evicted
	MissingInvalid           // timestamps out of order: never reported as latency
)

func (m Missing) String() string {
	switch m {
	case MissingNone:
		return "none"
	case MissingSYN:
		return "syn"
	case MissingHandshake:
		return "handshake"
	default:
		return "invalid"
	}
}

// Timeline is what a Conn proves: each latency is reported only when both
// of its ends were observed and are in order. A connection whose earlier
// stages were missed is incomplete; it still counts as accepted, but it
// never produces a made-up latency.
type Timeline struct {
	Handshake                            time.Duration // SYN -> handshake complete
	QueueWait                            time.Duration // handshake complete -> accept() returned
	Total                                time.Duration // SYN -> accept() returned
	HasHandshake, HasQueueWait, HasTotal bool
	Missing                              Missing
}

// Timeline classifies the connection. It is a pure function of c and does
// not allocate: it runs once per event on the reader's hot path.
func (c *Conn) Timeline() Timeline {
	var t Timeline
	est := c.Flags&FlagHandshake != 0 && c.Established > 0
	syn := c.SYNACKSent > 0 && c.Flags&FlagCookie == 0
	if c.Accepted <= 0 {
		t.Missing = MissingInvalid
		return t
	}
	if est {
		if c.Established > c.Accepted {
			t.Missing = MissingInvalid
			return t
		}
		t.QueueWait, t.HasQueueWait = c.Accepted-c.Established, true
	}
	if syn {
		if c.SYNACKSent > c.Accepted || (est && c.SYNACKSent > c.Established) {
			return Timeline{Missing: MissingInvalid}
		}
		t.Total, t.HasTotal = c.Accepted-c.SYNACKSent, true
		if est {
			t.Handshake, t.HasHandshake = c.Established-c.SYNACKSent, true
		}
	}
	switch {
	case !est:
		t.Missing = MissingHandshake
	case !syn:
		t.Missing = MissingSYN
	}
	return t
}
