package stream

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/views"
)

var (
	web = events.ListenerKey{Netns: 7, Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080}
	db  = events.ListenerKey{Netns: 7, Addr: netip.MustParseAddr("10.0.0.1"), Port: 5432}
)

func conn(k events.ListenerKey, wait time.Duration) *events.Conn {
	return &events.Conn{Listener: k, Client: netip.MustParseAddrPort("10.0.0.9:40000"),
		Flags: events.FlagHandshake | events.FlagSYNExact, SYNACKSent: time.Second, Established: time.Second + time.Millisecond,
		Accepted: time.Second + time.Millisecond + wait}
}

func TestHubNeverBlocksAndCountsWhatDidNotFit(t *testing.T) {
	var h Hub
	slow := h.Subscribe(Filter{}, 10)
	onlyDB := h.Subscribe(Filter{Port: 5432}, 1000)
	for range 1000 {
		h.Conn(conn(web, 0)) // nobody reads: must not block
	}
	h.Drop(&events.Drop{Listener: db, Count: 1})
	if got := len(slow.Records()); got != 10 {
		t.Fatalf("slow subscriber queued %d, want 10", got)
	}
	if got := slow.Lost(); got != 991 {
		t.Fatalf("slow subscriber lost %d, want 991 (1001 offered - 10 queued)", got)
	}
	if got, lost := len(onlyDB.Records()), onlyDB.Lost(); got != 1 || lost != 0 {
		t.Fatalf("port filter: queued %d lost %d, want 1 and 0", got, lost)
	}
	h.Unsubscribe(slow)
	h.Unsubscribe(onlyDB)
	if h.Subscribers() != 0 {
		t.Fatalf("%d subscribers left", h.Subscribers())
	}
	h.Conn(conn(web, 0)) // no subscriber: no panic, nothing queued
	if slow.Lost() != 991 {
		t.Fatal("an unsubscribed queue still counts")
	}
}

func TestHubPublishDoesNotAllocate(t *testing.T) {
	var h Hub
	s := h.Subscribe(Filter{}, 1)
	c := conn(web, 0)
	if a := testing.AllocsPerRun(1000, func() { h.Conn(c) }); a != 0 {
		t.Fatalf("publish allocates %.1f times", a)
	}
	h.Unsubscribe(s)
	if a := testing.AllocsPerRun(1000, func() { h.Conn(c) }); a != 0 {
		t.Fatalf("publish without subscribers allocates %.1f times", a)
	}
}

func TestFilter(t *testing.T) {
	client := netip.MustParseAddr("10.0.0.9")
	for _, tc := range []struct {
		name       string
		f          Filter
		conn, drop bool
	}{
		{"all", Filter{}, true, true},
		{"port", Filter{Port: 8080}, true, true},
		{"other port", Filter{Port: 1}, false, false},
		{"netns", Filter{Netns: 8}, false, false},
		{"listener addr", Filter{Addr: web.Addr}, true, true},
		{"client addr", Filter{Addr: client}, true, true},
		{"other addr", Filter{Addr: netip.MustParseAddr("10.0.0.2")}, false, false},
		{"drops only", Filter{DropsOnly: true}, false, true},
		{"min wait met", Filter{MinWait: 5 * time.Millisecond}, true, true},
		{"min wait not met", Filter{MinWait: 50 * time.Millisecond}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &events.Drop{Listener: web, Client: netip.AddrPortFrom(client, 1), Count: 1}
			if got := tc.f.MatchConn(conn(web, 10*time.Millisecond)); got != tc.conn {
				t.Errorf("conn: %v, want %v", got, tc.conn)
			}
			if got := tc.f.MatchDrop(d); got != tc.drop {
				t.Errorf("drop: %v, want %v", got, tc.drop)
			}
			back, err := ParseFilter(tc.f.Query())
			if err != nil || back != tc.f {
				t.Errorf("query round trip: %+v, %v; want %+v", back, err, tc.f)
			}
		})
	}
	// A connection whose wait is unknown is not "slow enough".
	noHandshake := conn(web, time.Second)
	noHandshake.Flags = 0
	if (&Filter{MinWait: time.Millisecond}).MatchConn(noHandshake) {
		t.Error("min wait took a connection whose wait is unknown")
	}
}

func TestParseFilterRejects(t *testing.T) {
	for _, q := range []string{"port=70000", "prot=80", "addr=nope", "netns=-1", "min_wait=fast", "min_wait=-1s", "drops_only=maybe", "port=1&port=2"} {
		v, _ := url.ParseQuery(q)
		if _, err := ParseFilter(v); err == nil {
			t.Errorf("%s: accepted", q)
		}
	}
}

type fakeListeners struct{ ls []events.Listener }

func (f *fakeListeners) Listeners() ([]events.Listener, error) { return f.ls, nil }

type fakeOwners struct{}

func (fakeOwners) Owner(l *events.Listener) views.Owner {
	if l.Key.Port == 8080 {
		return views.Owner{PID: 1, Comm: "web", Namespace: "shop", Pod: "web-1"}
	}
	return views.Owner{PID: 2, Comm: "postgres"}
}

func collect(t *testing.T, s *Session, run func()) []Event {
	t.Helper()
	var out []Event
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s.Interval = time.Hour // summaries only at the end
	go func() {
		done <- s.Run(ctx, func(e *Event) error { out = append(out, *e); return nil })
	}()
	run()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSessionSummaries(t *testing.T) {
	src := &fakeListeners{ls: []events.Listener{{Key: web}, {Key: db}}}
	src.ls[0].DropsUnreported[events.DropAcceptQueueSYN] = 500 // before the session: not its to report
	var h Hub
	s, err := h.Open(Filter{}, 100, src, fakeOwners{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fresh := events.ListenerKey{Netns: 9, Addr: netip.IPv6Unspecified(), Port: 443}
	out := collect(t, s, func() {
		h.Drop(&events.Drop{Listener: web, Reason: events.DropAcceptQueueSYN, Count: 2, At: time.Second})
		src.ls[0].DropsUnreported[events.DropAcceptQueueSYN] = 48_711
		src.ls[1].DropsUnreported[events.DropSYNQueueFull] = 3
		src.ls = append(src.ls, events.Listener{Key: fresh}) // opened during the session
		src.ls[2].DropsUnreported[events.DropAcceptQueueACK] = 7
	})
	want := map[string]uint64{
		"drop 10.0.0.1:8080 accept_queue_full_syn":       2,
		"suppressed 10.0.0.1:8080 accept_queue_full_syn": 48_211,
		"suppressed 10.0.0.1:5432 syn_queue_full":        3,
		"suppressed [::]:443 accept_queue_full_ack":      7,
	}
	got := map[string]uint64{}
	for _, e := range out {
		got[e.Type+" "+e.Listener+" "+e.Reason] += e.Count
	}
	if len(got) != len(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d, want %d", k, got[k], n)
		}
	}
	var buf bytes.Buffer
	for i := range out {
		out[i].WriteText(&buf)
	}
	if !strings.Contains(buf.String(), "… 48,211 more accept_queue_full_syn drops on 10.0.0.1:8080 (netns 7, shop/web-1)") {
		t.Errorf("text:\n%s", buf.String())
	}
}

func TestSessionRestartedListenerAndPodFilter(t *testing.T) {
	src := &fakeListeners{ls: []events.Listener{{Key: web}, {Key: db}}}
	src.ls[0].DropsUnreported[events.DropOther] = 100
	src.ls[1].DropsUnreported[events.DropOther] = 100
	var h Hub
	s, err := h.Open(Filter{Pod: "shop/web-1"}, 100, src, fakeOwners{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := collect(t, s, func() {
		h.Conn(conn(web, time.Millisecond))
		h.Conn(conn(db, time.Millisecond))              // not the pod
		src.ls[0].DropsUnreported[events.DropOther] = 4 // closed and opened again
		src.ls[1].DropsUnreported[events.DropOther] = 200
	})
	if len(out) != 2 || out[0].Type != TypeAccept || out[1].Type != TypeSuppressed || out[1].Count != 4 {
		t.Fatalf("got %+v", out)
	}
	if out[0].QueueWaitSeconds == nil || *out[0].QueueWaitSeconds != 0.001 || out[0].Owner.Pod != "web-1" {
		t.Fatalf("accept event %+v", out[0])
	}
}

func TestSessionReportsWhatTheReaderLost(t *testing.T) {
	src := &fakeListeners{}
	var h Hub
	s, err := h.Open(Filter{}, 5, src, fakeOwners{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 25 { // before Run reads anything: 5 fit, 20 lost
		h.Conn(conn(web, 0))
	}
	out := collect(t, s, func() {})
	if len(out) != 6 || out[5].Type != TypeLost || out[5].Count != 20 {
		t.Fatalf("got %d events, last %+v", len(out), out[len(out)-1])
	}
	var buf bytes.Buffer
	out[5].WriteText(&buf)
	if !strings.Contains(buf.String(), "20 events not shown") {
		t.Fatalf("text %q", buf.String())
	}
}

func TestSessionStopsWhenEmitFails(t *testing.T) {
	var h Hub
	s, err := h.Open(Filter{}, 5, &fakeListeners{}, fakeOwners{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h.Conn(conn(web, 0))
	broken := errors.New("broken pipe")
	if err := s.Run(context.Background(), func(*Event) error { return broken }); !errors.Is(err, broken) {
		t.Fatalf("Run: %v, want the emit error", err)
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 48211: "48,211", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("%d: %q, want %q", n, got, want)
		}
	}
}
