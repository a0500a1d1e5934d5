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
)

// EventSize is the size of one ring-buffer record.
const EventSize = int(unsafe.Sizeof(bpfLwEvent{}))

// ErrShortRecord is how a record fails to decode: every record is one
// struct lw_event, so only its length can be wrong.
var ErrShortRecord = errors.New("short record")

// Decode fills c from one ring-buffer record. It checks the length and
// casts to the generated type: no reflection, no allocation.
func Decode(raw []byte, c *events.Conn) error {
	if len(raw) < EventSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrShortRecord, len(raw), EventSize)
	}
	e := (*bpfLwEvent)(unsafe.Pointer(&raw[0]))
	c.Listener = listenerKey(&e.Listener)
	var client netip.Addr
	if e.Listener.Family == unix.AF_INET {
		client = netip.AddrFrom4([4]byte(e.Raddr[:4]))
	} else {
		client = netip.AddrFrom16(e.Raddr).Unmap()
	}
	c.Client = netip.AddrPortFrom(client, e.Rport)
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
// each connection to sink. The Conn passed to sink is reused: sink must
// copy what it keeps. Run is the only reader.
func (t *Tracer) Run(ctx context.Context, sink func(*events.Conn)) error {
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
		if err := Decode(rec.RawSample, &c); err != nil {
			if t.decodeErrors.Add(1) == 1 {
				// Once: a decode error means a build mismatch, not traffic.
				t.log.Error().Err(err).Msg("undecodable ring buffer record")
			}
			continue
		}
		sink(&c)
	}
}
