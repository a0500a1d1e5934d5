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
	PID        uint32
	Comm       string
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
			Sockets: v.Sockets, Backlog: v.Backlog, PID: v.Pid, Comm: cString(v.Comm[:]),
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
