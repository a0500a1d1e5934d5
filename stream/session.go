package stream

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/views"
	"golang.org/x/sys/unix"
)

// Event types.
const (
	TypeAccept     = "accept"     // a connection returned by accept()
	TypeDrop       = "drop"       // a refused connection attempt (count of them)
	TypeSuppressed = "suppressed" // drops over the kernel's rate limit, per listener and reason, in the last interval
	TypeLost       = "lost"       // records this reader was too slow to take
)

// Event is one line of `listenwatch trace` and of /api/v1/events (v1):
// fields are only ever added. Durations are in seconds; an absent latency
// was not observed.
type Event struct {
	Time     time.Time    `json:"time"`
	Type     string       `json:"type"`
	Netns    uint32       `json:"netns,omitempty"`
	Listener string       `json:"listener,omitempty"` // addr:port
	Client   string       `json:"client,omitempty"`   // addr:port, when known
	Owner    *views.Owner `json:"owner,omitempty"`
	// accept
	HandshakeSeconds   *float64 `json:"handshake_seconds,omitempty"`
	QueueWaitSeconds   *float64 `json:"accept_queue_wait_seconds,omitempty"`
	SYNToAcceptSeconds *float64 `json:"syn_to_accept_seconds,omitempty"`
	// drop, suppressed
	Reason string `json:"reason,omitempty"`
	// drop, suppressed, lost: how many
	Count uint64 `json:"count,omitempty"`
	// drop: the accept-queue length of the socket at the drop
	AcceptQueue *uint32 `json:"accept_queue,omitempty"`
	// suppressed, lost: the interval counted
	IntervalSeconds float64 `json:"interval_seconds,omitempty"`
}

// Listeners is what a session reads each second for the summaries and the
// owners (the loader's Tracer is one).
type Listeners interface {
	Listeners() ([]events.Listener, error)
}

// Session turns one subscriber's records into Events, and once a second
// adds what the kernel did not send (drops over the rate limit) and what
// this reader lost.
type Session struct {
	hub      *Hub
	sub      *Sub
	filter   Filter
	src      Listeners
	owners   views.Owners
	Interval time.Duration // between summaries; 1s

	owner      map[events.ListenerKey]views.Owner
	unreported map[events.ListenerKey][events.DropReasons]uint64
	lost       uint64
	last       time.Time
	monoToWall time.Duration
}

// Open subscribes a session with a queue of queue records. The listeners'
// counts of unreported drops are read now: what was suppressed before the
// session is not its to report.
func (h *Hub) Open(f Filter, queue int, src Listeners, own views.Owners) (*Session, error) {
	s := &Session{hub: h, filter: f, src: src, owners: own, Interval: time.Second,
		owner: map[events.ListenerKey]views.Owner{}, unreported: map[events.ListenerKey][events.DropReasons]uint64{}}
	if _, err := s.readListeners(true); err != nil {
		return nil, err
	}
	s.last = time.Now()
	s.sub = h.Subscribe(f, queue)
	return s, nil
}

// Close unsubscribes.
func (s *Session) Close() { s.hub.Unsubscribe(s.sub) }

// readListeners refreshes owners and returns each listener's unreported
// drops since the last reading (new listeners: since they were first
// seen); a baseline reading only records them.
func (s *Session) readListeners(baseline bool) (map[events.ListenerKey][events.DropReasons]uint64, error) {
	ls, err := s.src.Listeners()
	if err != nil {
		return nil, fmt.Errorf("read listeners: %w", err)
	}
	s.monoToWall = wallOffset()
	delta := map[events.ListenerKey][events.DropReasons]uint64{}
	for i := range ls {
		l := &ls[i]
		s.owner[l.Key] = s.owners.Owner(l)
		prev := s.unreported[l.Key] // a listener new since the last reading: from zero
		if baseline {
			prev = l.DropsUnreported
		}
		for r, n := range l.DropsUnreported {
			if n < prev[r] { // closed and opened again: counts from zero
				prev = [events.DropReasons]uint64{}
				break
			}
		}
		var d [events.DropReasons]uint64
		some := false
		for r, n := range l.DropsUnreported {
			d[r] = n - prev[r]
			some = some || d[r] > 0
		}
		s.unreported[l.Key] = l.DropsUnreported
		if some {
			delta[l.Key] = d
		}
	}
	return delta, nil
}

// wallOffset is wall-clock time minus CLOCK_MONOTONIC, for the kernel's
// timestamps.
func wallOffset() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

// Run emits events until ctx ends or emit fails, then one last summary.
func (s *Session) Run(ctx context.Context, emit func(*Event) error) error {
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// What is queued already, then the last summary.
			for {
				select {
				case r := <-s.sub.Records():
					if err := s.record(&r, emit); err != nil {
						return err
					}
					continue
				default:
				}
				break
			}
			return s.summary(emit)
		case r := <-s.sub.Records():
			if err := s.record(&r, emit); err != nil {
				return err
			}
		case <-t.C:
			if err := s.summary(emit); err != nil {
				return err
			}
		}
	}
}

func (s *Session) record(r *Record, emit func(*Event) error) error {
	var e Event
	switch r.Kind {
	case events.KindAccept:
		e = s.acceptEvent(&r.Conn)
	default:
		e = s.dropEvent(&r.Drop)
	}
	if !s.podMatch(e.Owner) {
		return nil
	}
	return emit(&e)
}

func (s *Session) podMatch(o *views.Owner) bool {
	if s.filter.Pod == "" {
		return true
	}
	if o == nil || o.Pod == "" {
		return false
	}
	return s.filter.Pod == o.Pod || s.filter.Pod == o.Namespace+"/"+o.Pod
}

func (s *Session) ownerOf(k events.ListenerKey) *views.Owner {
	if o, ok := s.owner[k]; ok {
		return &o
	}
	return nil
}

func seconds(d time.Duration) *float64 {
	v := d.Seconds()
	return &v
}

func (s *Session) acceptEvent(c *events.Conn) Event {
	e := Event{Time: time.Unix(0, int64(c.Accepted+s.monoToWall)), Type: TypeAccept, Netns: c.Listener.Netns,
		Listener: addrPort(c.Listener), Client: c.Client.String(), Owner: s.ownerOf(c.Listener), Count: 1}
	tl := c.Timeline()
	if tl.HasHandshake {
		e.HandshakeSeconds = seconds(tl.Handshake)
	}
	if tl.HasQueueWait {
		e.QueueWaitSeconds = seconds(tl.QueueWait)
	}
	if tl.HasTotal {
		e.SYNToAcceptSeconds = seconds(tl.Total)
	}
	return e
}

func (s *Session) dropEvent(d *events.Drop) Event {
	q := d.AcceptQueueLen
	e := Event{Time: time.Unix(0, int64(d.At+s.monoToWall)), Type: TypeDrop, Netns: d.Listener.Netns,
		Listener: addrPort(d.Listener), Owner: s.ownerOf(d.Listener), Reason: d.Reason.String(),
		Count: uint64(d.Count), AcceptQueue: &q}
	if d.Client.IsValid() {
		e.Client = d.Client.String()
	}
	return e
}

func addrPort(k events.ListenerKey) string {
	if k.Addr.Is6() {
		return "[" + k.Addr.String() + "]:" + strconv.Itoa(int(k.Port))
	}
	return k.Addr.String() + ":" + strconv.Itoa(int(k.Port))
}

// summary emits, for the interval since the last one, the drops the
// kernel counted but did not send (per listener and reason) and the
// records this reader lost.
func (s *Session) summary(emit func(*Event) error) error {
	now := time.Now()
	interval := now.Sub(s.last).Seconds()
	s.last = now
	delta, err := s.readListeners(false)
	if err != nil {
		return err
	}
	for k, d := range delta {
		if !s.filter.matchListener(k) {
			continue
		}
		o := s.ownerOf(k)
		if !s.podMatch(o) {
			continue
		}
		for r, n := range d {
			if n == 0 {
				continue
			}
			e := Event{Time: now, Type: TypeSuppressed, Netns: k.Netns, Listener: addrPort(k), Owner: o,
				Reason: events.DropReason(r).String(), Count: n, IntervalSeconds: interval}
			if err := emit(&e); err != nil {
				return err
			}
		}
	}
	if lost := s.sub.Lost(); lost > s.lost {
		e := Event{Time: now, Type: TypeLost, Count: lost - s.lost, IntervalSeconds: interval}
		s.lost = lost
		if err := emit(&e); err != nil {
			return err
		}
	}
	return nil
}

// WriteText writes e as one line of `listenwatch trace`.
func (e *Event) WriteText(w io.Writer) error {
	var b strings.Builder
	b.WriteString(e.Time.Format("15:04:05.000000"))
	b.WriteByte(' ')
	switch e.Type {
	case TypeAccept:
		fmt.Fprintf(&b, "accept %-21s %-21s %-24s", e.Listener, e.Client, e.ownerString())
		fmt.Fprintf(&b, " handshake %s wait %s syn->accept %s", ms(e.HandshakeSeconds), ms(e.QueueWaitSeconds), ms(e.SYNToAcceptSeconds))
	case TypeDrop:
		client := e.Client
		if client == "" {
			client = "?"
		}
		fmt.Fprintf(&b, "DROP   %-21s %-21s %-24s %s", e.Listener, client, e.ownerString(), e.Reason)
		if e.Count > 1 {
			fmt.Fprintf(&b, " x%d", e.Count)
		}
		if e.AcceptQueue != nil && *e.AcceptQueue > 0 {
			fmt.Fprintf(&b, " (accept queue %d)", *e.AcceptQueue)
		}
	case TypeSuppressed:
		fmt.Fprintf(&b, "… %s more %s drops on %s (netns %d, %s) in the last %.1fs (over %d records/s per listener)",
			thousands(e.Count), e.Reason, e.Listener, e.Netns, e.ownerString(), e.IntervalSeconds, events.DropRecordsPerSecond)
	case TypeLost:
		fmt.Fprintf(&b, "… %s events not shown in the last %.1fs: this reader was too slow (narrow the filters)", thousands(e.Count), e.IntervalSeconds)
	default:
		fmt.Fprintf(&b, "%s %s", e.Type, e.Listener)
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

func (e *Event) ownerString() string {
	if e.Owner == nil {
		return "?"
	}
	return e.Owner.String()
}

func ms(v *float64) string {
	if v == nil {
		return "-"
	}
	return strconv.FormatFloat(*v*1000, 'f', 3, 64) + "ms"
}

// thousands writes n with thousands separators: 48,211.
func thousands(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
