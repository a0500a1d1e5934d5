package loader

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/events"
)

// Listener is a listener's state read from the kernel at scrape time.
type Listener struct {
	Key        events.ListenerKey
	SYNs       uint64 // SYNs received
	Handshakes uint64 // handshakes completed
	Accepted   uint64 // connections returned by accept()
	Sockets    int64  // listening sockets with this identity now
	Backlog    uint32 // effective backlog (sk_max_ack_backlog); 0 if unknown
	// RequestedBacklog is what listen() asked for, before the somaxconn
	// cap; 0 when the listener predates the agent.
	RequestedBacklog uint32
	PID              uint32
	Comm             string
	// Queue lengths as of the last SYN the listener received.
	AcceptQueueLen, SYNQueueLen uint32

	Drops         [DropReasons]uint64 // by DropReason
	CookiesSent   uint64              // SYNs answered with a SYN cookie
	SynackRetrans uint64              // SYN-ACKs retransmitted
	AcceptEMFILE  uint64              // accept() failed: process fd limit
	AcceptENFILE  uint64              // accept() failed: system file limit
}

// DropReason says why a listener refused a connection.
type DropReason int

// The reasons, in the kernel's order (enum lw_drop).
const (
	DropAcceptQueueSYN       = DropReason(bpfLwDropLW_DROP_ACCEPTQ_SYN)
	DropAcceptQueueACK       = DropReason(bpfLwDropLW_DROP_ACCEPTQ_ACK)
	DropAcceptQueueCookieACK = DropReason(bpfLwDropLW_DROP_ACCEPTQ_COOKIE_ACK)
	DropSYNQueueFull         = DropReason(bpfLwDropLW_DROP_SYNQ_FULL)
	DropOther                = DropReason(bpfLwDropLW_DROP_OTHER)
	DropReasons              = int(bpfLwDropLW_DROP_MAX)
)

// String is the reason's metric label.
func (r DropReason) String() string {
	switch r {
	case DropAcceptQueueSYN:
		return "accept_queue_full_syn"
	case DropAcceptQueueACK:
		return "accept_queue_full_ack"
	case DropAcceptQueueCookieACK:
		return "accept_queue_full_cookie_ack"
	case DropSYNQueueFull:
		return "syn_queue_full"
	}
	return "other"
}

// Overflows is the listener's share of the kernel's ListenOverflows.
func (l *Listener) Overflows() uint64 {
	return l.Drops[DropAcceptQueueSYN] + l.Drops[DropAcceptQueueACK] + l.Drops[DropAcceptQueueCookieACK]
}

// TotalDrops is the listener's share of the kernel's ListenDrops.
func (l *Listener) TotalDrops() uint64 {
	var n uint64
	for _, d := range l.Drops {
		n += d
	}
	return n
}

// Listeners reads the listener registry.
func (t *Tracer) Listeners() ([]Listener, error) {
	var (
		k   bpfLwListenerKey
		v   bpfLwListenerStats
		out []Listener
	)
	it := t.maps[bpfMapLwListeners].Iterate()
	for it.Next(&k, &v) {
		out = append(out, Listener{
			Key: listenerKey(&k), SYNs: v.Syns, Handshakes: v.Handshakes, Accepted: v.Accepted,
			Sockets: v.Sockets, Backlog: v.Backlog, RequestedBacklog: v.ReqBacklog, PID: v.Pid, Comm: cString(v.Comm[:]),
			Drops: v.Drops, CookiesSent: v.CookiesSent, SynackRetrans: v.SynackRetrans,
			AcceptQueueLen: v.LastAckq, SYNQueueLen: v.LastQlen,
			AcceptEMFILE: v.AcceptErrors[bpfLwAcceptErrLW_AERR_EMFILE], AcceptENFILE: v.AcceptErrors[bpfLwAcceptErrLW_AERR_ENFILE],
		})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("read listeners: %w", err)
	}
	return out, nil
}

func cString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// Counters are the tracer's own health counters.
type Counters struct {
	RingbufLost           uint64 // records the kernel could not reserve
	DecodeErrors          uint64 // records the reader could not decode
	Records               uint64 // records read
	UnattributedSYN       uint64 // SYNs to no registered listener
	UnattributedHandshake uint64
	UnattributedAccept    uint64
}

// Counters sums the per-CPU counters.
func (t *Tracer) Counters() (Counters, error) {
	var sums [bpfLwCounterLW_C_MAX]uint64
	var per []uint64
	for i := range sums {
		if err := t.maps[bpfMapLwCounters].Lookup(uint32(i), &per); err != nil {
			return Counters{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			sums[i] += v
		}
	}
	return Counters{
		RingbufLost:           sums[bpfLwCounterLW_C_RINGBUF_LOST],
		UnattributedSYN:       sums[bpfLwCounterLW_C_UNATTRIBUTED_SYN],
		UnattributedHandshake: sums[bpfLwCounterLW_C_UNATTRIBUTED_HANDSHAKE],
		UnattributedAccept:    sums[bpfLwCounterLW_C_UNATTRIBUTED_ACCEPT],
		DecodeErrors:          t.decodeErrors.Load(),
		Records:               t.records.Load(),
	}, nil
}

// ProgramStats is the kernel's accounting of one attached program.
type ProgramStats struct {
	Name            string
	Stage           Stage
	RecursionMisses uint64        // runs skipped because the program was already running on that CPU
	RunTime         time.Duration // with kernel.bpf_stats_enabled=1 only
	RunCount        uint64        // with kernel.bpf_stats_enabled=1 only
}

// Programs reads the kernel's statistics of every attached program.
func (t *Tracer) Programs() ([]ProgramStats, error) {
	var (
		out  []ProgramStats
		errs []error
	)
	for _, h := range t.hooks {
		for _, name := range h.Programs {
			p := t.progs[name]
			if p == nil {
				continue
			}
			st, err := p.Stats()
			if err != nil {
				errs = append(errs, fmt.Errorf("program %s: %w", name, err))
				continue
			}
			out = append(out, ProgramStats{Name: name, Stage: h.Stage,
				RecursionMisses: st.RecursionMisses, RunTime: st.Runtime, RunCount: st.RunCount})
		}
	}
	return out, errors.Join(errs...)
}

// Map gives tests and benchmarks read access to a map by name.
func (t *Tracer) Map(name string) *ebpf.Map { return t.maps[name] }
