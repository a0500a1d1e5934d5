package exporter

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

type fakeSource struct {
	listeners []loader.Listener
	counters  loader.Counters
	programs  []loader.ProgramStats
	hooks     []loader.Hook
	err       error
}

func (f *fakeSource) Listeners() ([]loader.Listener, error)    { return f.listeners, f.err }
func (f *fakeSource) Counters() (loader.Counters, error)       { return f.counters, f.err }
func (f *fakeSource) Programs() ([]loader.ProgramStats, error) { return f.programs, f.err }
func (f *fakeSource) Hooks() []loader.Hook                     { return f.hooks }

var web = events.ListenerKey{Netns: 4026531840, Addr: netip.MustParseAddr("10.0.0.5"), Port: 8080}

func newFake() *fakeSource {
	return &fakeSource{
		listeners: []loader.Listener{{Key: web, SYNs: 12, Handshakes: 11, Accepted: 10, Sockets: 2, Backlog: 128, PID: 4242, Comm: "nginx"}},
		counters:  loader.Counters{RingbufLost: 3, Records: 10, DecodeErrors: 1, UnattributedSYN: 5},
		programs:  []loader.ProgramStats{{Name: "lw_tp_state", Stage: loader.StageRegistry, RecursionMisses: 2, RunTime: 1500 * time.Millisecond, RunCount: 7}},
		hooks: []loader.Hook{
			{Stage: loader.StageSYN, Mode: loader.ModeTracepoint},
			{Stage: loader.StageHandshake, Mode: loader.ModeNone},
		},
	}
}

func TestListenerCounters(t *testing.T) {
	c := New(newFake(), zerolog.Nop())
	want := `
# HELP listenwatch_listener_connections_accepted_total Connections returned to the application by accept().
# TYPE listenwatch_listener_connections_accepted_total counter
listenwatch_listener_connections_accepted_total{addr="10.0.0.5",netns="4026531840",port="8080"} 10
# HELP listenwatch_listener_handshakes_completed_total Handshakes completed: child sockets put in the accept queue.
# TYPE listenwatch_listener_handshakes_completed_total counter
listenwatch_listener_handshakes_completed_total{addr="10.0.0.5",netns="4026531840",port="8080"} 11
# HELP listenwatch_listener_info Process that owns the listener (last to call listen() or accept()), and its Kubernetes pod UID (join with kube_pod_info{uid}) when it runs in one.
# TYPE listenwatch_listener_info gauge
listenwatch_listener_info{addr="10.0.0.5",comm="nginx",netns="4026531840",pid="4242",pod_uid="",port="8080"} 1
# HELP listenwatch_listener_syns_received_total SYNs that reached the listener: queued, answered with a cookie, or dropped.
# TYPE listenwatch_listener_syns_received_total counter
listenwatch_listener_syns_received_total{addr="10.0.0.5",netns="4026531840",port="8080"} 12
# HELP listenwatch_hook_info Attach mode of each stage on this kernel (mode=none: not attached).
# TYPE listenwatch_hook_info gauge
listenwatch_hook_info{mode="none",stage="handshake"} 1
listenwatch_hook_info{mode="tracepoint",stage="syn"} 1
# HELP listenwatch_ringbuf_lost_events_total Events dropped because the ring buffer was full.
# TYPE listenwatch_ringbuf_lost_events_total counter
listenwatch_ringbuf_lost_events_total 3
# HELP listenwatch_decode_errors_total Ring-buffer records that could not be decoded.
# TYPE listenwatch_decode_errors_total counter
listenwatch_decode_errors_total 1
# HELP listenwatch_unattributed_events_total Events whose listener was not found in the registry, by stage.
# TYPE listenwatch_unattributed_events_total counter
listenwatch_unattributed_events_total{stage="accept"} 0
listenwatch_unattributed_events_total{stage="handshake"} 0
listenwatch_unattributed_events_total{stage="syn"} 5
# HELP listenwatch_bpf_run_seconds_total CPU time spent in the program (only while kernel.bpf_stats_enabled=1).
# TYPE listenwatch_bpf_run_seconds_total counter
listenwatch_bpf_run_seconds_total{program="lw_tp_state"} 1.5
`
	names := []string{
		"listenwatch_listener_connections_accepted_total", "listenwatch_listener_handshakes_completed_total",
		"listenwatch_listener_info", "listenwatch_listener_syns_received_total", "listenwatch_hook_info",
		"listenwatch_ringbuf_lost_events_total", "listenwatch_decode_errors_total",
		"listenwatch_unattributed_events_total", "listenwatch_bpf_run_seconds_total",
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}

func TestHistogramsAndIncomplete(t *testing.T) {
	c := New(newFake(), zerolog.Nop())
	const ms = time.Millisecond
	// A complete connection: 40us handshake, 20ms in the queue.
	c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT,
		SYN: 1000 * ms, Established: 1000*ms + 40*time.Microsecond, Accepted: 1020*ms + 40*time.Microsecond})
	// The agent started while this one was queued: counted, not timed.
	c.Observe(&events.Conn{Listener: web, Accepted: 1030 * ms})
	// Unattributed: no series at all.
	c.Observe(&events.Conn{Listener: events.ListenerKey{Netns: 1, Addr: netip.MustParseAddr("10.9.9.9"), Port: 1}, Flags: events.FlagNoListener, Accepted: 5})

	want := `
# HELP listenwatch_accept_queue_wait_seconds Time a completed connection waited in the accept queue until accept() returned it.
# TYPE listenwatch_accept_queue_wait_seconds histogram
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="1e-05"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="2.5e-05"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="5e-05"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.0001"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.00025"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.0005"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.001"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.0025"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.005"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.01"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.025"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.05"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.1"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.25"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.5"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="1"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="2.5"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="5"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="10"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="+Inf"} 1
listenwatch_accept_queue_wait_seconds_sum{addr="10.0.0.5",netns="4026531840",port="8080"} 0.02
listenwatch_accept_queue_wait_seconds_count{addr="10.0.0.5",netns="4026531840",port="8080"} 1
# HELP listenwatch_incomplete_connections_total Accepted connections with a stage not observed (agent started later, SYN cookie, or record evicted): counted, never timed.
# TYPE listenwatch_incomplete_connections_total counter
listenwatch_incomplete_connections_total{addr="10.0.0.5",missing="handshake",netns="4026531840",port="8080"} 1
listenwatch_incomplete_connections_total{addr="10.0.0.5",missing="invalid",netns="4026531840",port="8080"} 0
listenwatch_incomplete_connections_total{addr="10.0.0.5",missing="syn",netns="4026531840",port="8080"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"listenwatch_accept_queue_wait_seconds", "listenwatch_incomplete_connections_total"); err != nil {
		t.Fatal(err)
	}
	// Exactly one listener has series: the unattributed event made none.
	if n := testutil.CollectAndCount(c, "listenwatch_syn_to_accept_seconds"); n != 1 {
		t.Fatalf("syn_to_accept series = %d, want 1", n)
	}
}

func TestBucketEdges(t *testing.T) {
	var h hist
	h.observe(10 * time.Microsecond) // le="1e-05" includes its bound
	h.observe(10*time.Microsecond + 1)
	h.observe(11 * time.Second) // +Inf
	n, _, b := h.snapshot()
	if n != 3 || b[10e-6] != 1 || b[25e-6] != 2 || b[10] != 2 {
		t.Fatalf("count %d buckets %v", n, b)
	}
}

func TestLint(t *testing.T) {
	c := New(newFake(), zerolog.Nop())
	c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake, SYN: 1, Established: 2, Accepted: 3})
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

func TestScrapeErrorCounted(t *testing.T) {
	f := newFake()
	f.err = errors.New("map gone")
	c := New(f, zerolog.Nop())
	want := `
# HELP listenwatch_scrape_errors_total Scrapes that could not read kernel state.
# TYPE listenwatch_scrape_errors_total counter
listenwatch_scrape_errors_total 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "listenwatch_scrape_errors_total"); err != nil {
		t.Fatal(err)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	c := New(newFake(), zerolog.Nop())
	conn := &events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT, SYN: 1, Established: 2, Accepted: 3}
	c.Observe(conn) // first sight of the listener allocates its state
	if a := testing.AllocsPerRun(1000, func() { c.Observe(conn) }); a != 0 {
		t.Fatalf("Observe allocates %.1f times per event", a)
	}
}

func BenchmarkObserve(b *testing.B) {
	c := New(newFake(), zerolog.Nop())
	conn := &events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT, SYN: 1000, Established: 41000, Accepted: 20041000}
	b.ReportAllocs()
	for b.Loop() {
		c.Observe(conn)
	}
}

func TestClosedListenerSeriesEvicted(t *testing.T) {
	f := newFake()
	c := New(f, zerolog.Nop())
	c.Observe(&events.Conn{Listener: web, Accepted: 5})
	// Still open: kept, whatever the traffic.
	testutil.CollectAndCount(c)
	testutil.CollectAndCount(c)
	if c.Listeners() != 1 {
		t.Fatalf("open listener evicted")
	}
	// Closed, but a connection arrived since the last scrape: kept once.
	f.listeners[0].Sockets = 0
	c.Observe(&events.Conn{Listener: web, Accepted: 6})
	testutil.CollectAndCount(c)
	if c.Listeners() != 1 {
		t.Fatalf("closed listener evicted while still seeing connections")
	}
	// Closed and quiet for a scrape interval: gone.
	testutil.CollectAndCount(c)
	if c.Listeners() != 0 {
		t.Fatalf("closed listener's series kept")
	}
}
