package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/events"
)

// The drop reasons are defined in C (enum lw_drop) and named in events;
// each pair is checked on its own, so a swap cannot cancel out. A
// mismatch fails the build: a negative constant or an index out of range.
var (
	_ = [1]struct{}{}[events.DropAcceptQueueSYN-events.DropReason(bpfLwDropLW_DROP_ACCEPTQ_SYN)]
	_ = [1]struct{}{}[events.DropAcceptQueueACK-events.DropReason(bpfLwDropLW_DROP_ACCEPTQ_ACK)]
	_ = [1]struct{}{}[events.DropAcceptQueueCookieACK-events.DropReason(bpfLwDropLW_DROP_ACCEPTQ_COOKIE_ACK)]
	_ = [1]struct{}{}[events.DropSYNQueueFull-events.DropReason(bpfLwDropLW_DROP_SYNQ_FULL)]
	_ = [1]struct{}{}[events.DropOther-events.DropReason(bpfLwDropLW_DROP_OTHER)]
	_ = [1]struct{}{}[events.DropReasons-int(bpfLwDropLW_DROP_MAX)]
	_ = [1]struct{}{}[events.OwnersMax-int(bpfLwLimitsLW_OWNERS_MAX)]
	_ = [1]struct{}{}[events.DropRecordsPerSecond-int(bpfLwLimitsLW_DROP_EVENTS_PER_SEC)]
)

// Listeners reads the listener registry. Readings are serialized: each
// is compared with the previous one to count evictions (noteEvictions).
func (t *Tracer) Listeners() ([]events.Listener, error) {
	t.registryMu.Lock()
	defer t.registryMu.Unlock()
	var out []events.Listener
	err := readMap(t.maps[bpfMapLwListeners], func(k *bpfLwListenerKey, v *bpfLwListenerStats) {
		out = append(out, events.Listener{
			Key: listenerKey(k), SYNs: v.Syns, Handshakes: v.Handshakes, Accepted: v.Accepted,
			Sockets: v.Sockets, Backlog: v.Backlog, RequestedBacklog: v.ReqBacklog, PID: v.Pid, Comm: cString(v.Comm[:]),
			Drops: v.Drops, DropsUnreported: v.DropsUnreported, CookiesSent: v.CookiesSent, SynackRetrans: v.SynackRetrans, Owners: v.Owners,
			AcceptQueueLen: v.LastAckq, SYNQueueLen: v.LastQlen,
			AcceptEMFILE: v.AcceptErrors[bpfLwAcceptErrLW_AERR_EMFILE], AcceptENFILE: v.AcceptErrors[bpfLwAcceptErrLW_AERR_ENFILE],
		})
	})
	if err != nil {
		return out, fmt.Errorf("read listeners: %w", err)
	}
	t.noteEvictions(out)
	return out, nil
}

// noteEvictions counts the listeners that were open at the previous
// reading and are gone now though the sweeper did not delete them: only
// the kernel's LRU eviction removes an open listener's entry. Called with
// registryMu held.
func (t *Tracer) noteEvictions(out []events.Listener) {
	present := make(map[events.ListenerKey]struct{}, len(out))
	open := make(map[events.ListenerKey]struct{}, len(out))
	for i := range out {
		present[out[i].Key] = struct{}{}
		if out[i].Sockets > 0 {
			open[out[i].Key] = struct{}{}
		}
	}
	var n uint64
	for k := range t.lastOpen {
		_, here := present[k]
		_, swept := t.swept[k]
		if !here && !swept {
			n++
		}
	}
	t.lastOpen, t.swept = open, nil
	if n > 0 {
		total := t.evicted.Add(n)
		t.log.Warn().Uint64("evicted", n).Uint64("evicted_total", total).Uint32("capacity", t.cfg.ListenerTableSize).
			Int("entries", len(out)).Msg("listener table full: open listeners evicted, their counts lost; raise --listener-table-size")
	}
}

// forgotten records a key the sweeper deleted, so that its absence is not
// taken for an eviction.
func (t *Tracer) forgotten(k events.ListenerKey) {
	t.registryMu.Lock()
	defer t.registryMu.Unlock()
	if t.swept == nil {
		t.swept = map[events.ListenerKey]struct{}{}
	}
	t.swept[k] = struct{}{}
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

// Counters sums the per-CPU counters.
func (t *Tracer) Counters() (events.Counters, error) {
	var sums [bpfLwCounterLW_C_MAX]uint64
	var per []uint64
	for i := range sums {
		if err := t.maps[bpfMapLwCounters].Lookup(uint32(i), &per); err != nil {
			return events.Counters{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range per {
			sums[i] += v
		}
	}
	return events.Counters{
		RingbufLost:           sums[bpfLwCounterLW_C_RINGBUF_LOST],
		UnattributedSYN:       sums[bpfLwCounterLW_C_UNATTRIBUTED_SYN],
		UnattributedHandshake: sums[bpfLwCounterLW_C_UNATTRIBUTED_HANDSHAKE],
		UnattributedAccept:    sums[bpfLwCounterLW_C_UNATTRIBUTED_ACCEPT],
		DecodeErrors:          t.decodeErrors.Load(),
		Records:               t.records.Load(),
		ListenersEvicted:      t.evicted.Load(),
		ListenerCapacity:      uint64(t.cfg.ListenerTableSize),
	}, nil
}

// Programs reads the kernel's statistics of every attached program.
func (t *Tracer) Programs() ([]events.ProgramStats, error) {
	var (
		out  []events.ProgramStats
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
			out = append(out, events.ProgramStats{Name: name, Stage: h.Stage,
				RecursionMisses: st.RecursionMisses, RunTime: st.Runtime, RunCount: st.RunCount})
		}
	}
	return out, errors.Join(errs...)
}

// Map gives tests and benchmarks read access to a map by name.
func (t *Tracer) Map(name string) *ebpf.Map { return t.maps[name] }

// ProgramIDs are the kernel's IDs of the programs this tracer attached:
// what is its own, whatever other BPF users load beside it.
func (t *Tracer) ProgramIDs() ([]ebpf.ProgramID, error) {
	var ids []ebpf.ProgramID
	for _, h := range t.hooks {
		for _, name := range h.Programs {
			info, err := t.progs[name].Info()
			if err != nil {
				return nil, fmt.Errorf("program %s: %w", name, err)
			}
			id, ok := info.ID()
			if !ok {
				return nil, fmt.Errorf("program %s: the kernel reports no ID", name)
			}
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// PendingByNetns counts, per network namespace, the connections whose
// handshake completed and that were not accepted yet (the join table):
// what a namespace holds in the kernel's bounded table.
func (t *Tracer) PendingByNetns() (map[uint32]int, error) {
	out := map[uint32]int{}
	err := readMap(t.maps[bpfMapLwConns], func(_ *uint64, v *bpfLwConn) { out[v.Listener.Netns]++ })
	if err != nil {
		return nil, fmt.Errorf("read connection table: %w", err)
	}
	// A slot is held while its sk is set (one being written or taken
	// at this instant counts as held).
	err = readMap(t.maps[bpfMapLwConnSlots], func(_ *uint32, v *bpfLwConnSlot) {
		if v.Sk != 0 {
			out[v.Conn.Listener.Netns]++
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read connection slots: %w", err)
	}
	return out, nil
}
