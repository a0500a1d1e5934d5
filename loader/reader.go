package loader

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/listenwatch/listenwatch/events"
	"golang.org/x/sys/unix"
)

// The flags are defined once, in C; events repeats them as domain
// constants. Each pair is checked on its own: a drift or a swap fails the
// build here (a negative constant, or an index out of range).
var (
	_ = [1]struct{}{}[uint32(events.FlagSYNExact)-uint32(bpfLwFlagLW_F_SYN_EXACT)]
	_ = [1]struct{}{}[uint32(events.FlagSYNFromRTT)-uint32(bpfLwFlagLW_F_SYN_SRTT)]
	_ = [1]struct{}{}[uint32(events.FlagSYNFromRTO)-uint32(bpfLwFlagLW_F_SYN_RTO)]
	_ = [1]struct{}{}[uint32(events.FlagCookie)-uint32(bpfLwFlagLW_F_COOKIE)]
	_ = [1]struct{}{}[uint32(events.FlagHandshake)-uint32(bpfLwFlagLW_F_HANDSHAKE)]
	_ = [1]struct{}{}[uint32(events.FlagNoListener)-uint32(bpfLwFlagLW_F_NO_LISTENER)]
	_ = [1]struct{}{}[uint32(events.KindAccept)-uint32(bpfLwKindLW_K_ACCEPT)]
	_ = [1]struct{}{}[uint32(events.KindDrop)-uint32(bpfLwKindLW_K_DROP)]
)

// EventSize is the size of one ring-buffer record.
const EventSize = int(unsafe.Sizeof(bpfLwEvent{}))

// ErrShortRecord and ErrRecordKind are how a record fails to decode:
// every record is one struct lw_event, so only its length or its kind can
// be wrong.
var (
	ErrShortRecord = errors.New("short record")
	ErrRecordKind  = errors.New("unknown record kind")
)

// RecordKind says what a record holds: Decode reads an accept record,
// DecodeDrop a drop record.
func RecordKind(raw []byte) (events.Kind, error) {
	if len(raw) < EventSize {
		return 0, fmt.Errorf("%w: %d bytes, want %d", ErrShortRecord, len(raw), EventSize)
	}
	k := events.Kind((*bpfLwEvent)(unsafe.Pointer(&raw[0])).Kind)
	if k != events.KindAccept && k != events.KindDrop {
		return k, fmt.Errorf("%w %d", ErrRecordKind, k)
	}
	return k, nil
}

// DecodeDrop fills d from a drop record (RecordKind said KindDrop).
func DecodeDrop(raw []byte, d *events.Drop) error {
	if len(raw) < EventSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrShortRecord, len(raw), EventSize)
	}
	e := (*bpfLwEvent)(unsafe.Pointer(&raw[0]))
	d.Listener = listenerKey(&e.Listener)
	d.Client = netip.AddrPort{}
	if e.Rport != 0 {
		d.Client = netip.AddrPortFrom(clientAddr(e), e.Rport)
	}
	d.Reason = events.DropReason(e.Reason)
	if d.Reason < 0 || d.Reason >= events.DropReasons {
		d.Reason = events.DropOther
	}
	d.Count = max(e.Count, 1)
	d.At = time.Duration(e.T_acc)
	d.AcceptQueueLen = e.Ackq
	return nil
}

func clientAddr(e *bpfLwEvent) netip.Addr {
	if e.Listener.Family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(e.Raddr[:4]))
	}
	return netip.AddrFrom16(e.Raddr).Unmap()
}

// Decode fills c from one ring-buffer record. It checks the length and
// casts to the generated type: no reflection, no allocation.
func Decode(raw []byte, c *events.Conn) error {
	if len(raw) < EventSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrShortRecord, len(raw), EventSize)
	}
	e := (*bpfLwEvent)(unsafe.Pointer(&raw[0]))
	c.Listener = listenerKey(&e.Listener)
	c.Client = netip.AddrPortFrom(clientAddr(e), e.Rport)
	c.PID = e.Pid
	c.Flags = events.Flags(e.Flags)
	c.SYNACKSent = time.Duration(e.T_synack)
	c.Established = time.Duration(e.T_est)
	c.Accepted = time.Duration(e.T_acc)
	c.AcceptQueueLen = e.Ackq
	return nil
}

func listenerKey(k *bpfLwListenerKey) events.ListenerKey {
	var a netip.Addr
	if k.Family == unix.AF_INET {
		a = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		a = netip.AddrFrom16(k.Addr)
	}
	return events.ListenerKey{Netns: k.Netns, Addr: a, Port: k.Port}
}

// Run reads the ring buffer until ctx ends or the tracer closes, handing
// each accepted connection to sink and each drop record to drops (nil:
// skipped). The values passed are reused: the callee copies what it keeps.
// Run is the only reader.
func (t *Tracer) Run(ctx context.Context, sink func(*events.Conn), drops func(*events.Drop)) error {
	stop := context.AfterFunc(ctx, func() { t.reader.Close() })
	defer stop()
	// The sweeper ends before Run returns: nothing touches the maps after.
	sweepCtx, endSweep := context.WithCancel(ctx)
	swept := make(chan struct{})
	go func() { defer close(swept); t.sweep(sweepCtx) }()
	defer func() { endSweep(); <-swept }()

	// Most records are submitted without a wake-up (see submit() in the
	// BPF code): the reader drains on a deadline, and is woken early only
	// when a backlog builds up.
	var (
		rec ringbuf.Record
		c   events.Conn
		d   events.Drop
	)
	t.reader.SetDeadline(time.Now().Add(t.cfg.PollInterval))
	for {
		err := t.reader.ReadInto(&rec)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.reader.SetDeadline(time.Now().Add(t.cfg.PollInterval))
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read ring buffer: %w", err)
		}
		t.records.Add(1)
		kind, err := RecordKind(rec.RawSample)
		if err == nil {
			if kind == events.KindDrop {
				if err = DecodeDrop(rec.RawSample, &d); err == nil && drops != nil {
					drops(&d)
				}
			} else if err = Decode(rec.RawSample, &c); err == nil {
				sink(&c)
			}
		}
		if err != nil && t.decodeErrors.Add(1) == 1 {
			// Once: a decode error means a build mismatch, not traffic.
			t.log.Error().Err(err).Msg("undecodable ring buffer record")
		}
	}
}
