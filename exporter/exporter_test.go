package exporter

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
)

type fakeSource struct {
	listeners []events.Listener
	counters  events.Counters
	programs  []events.ProgramStats
	hooks     []events.Hook
	// errors by source: one failing source must not hide the others.
	errListeners, errCounters, errPrograms error
}

func (f *fakeSource) Listeners() ([]events.Listener, error)    { return f.listeners, f.errListeners }
func (f *fakeSource) Counters() (events.Counters, error)       { return f.counters, f.errCounters }
func (f *fakeSource) Programs() ([]events.ProgramStats, error) { return f.programs, f.errPrograms }
func (f *fakeSource) Hooks() []events.Hook                     { return f.hooks }

var web = events.ListenerKey{Netns: 4026531840, Addr: netip.MustParseAddr("10.0.0.5"), Port: 8080}

func newFake() *fakeSource {
	return &fakeSource{
		listeners: []events.Listener{{Key: web, SYNs: 12, Handshakes: 11, Accepted: 10, Sockets: 2, Backlog: 128, PID: 4242, Comm: "nginx"}},
		counters:  events.Counters{RingbufLost: 3, Records: 10, DecodeErrors: 1, UnattributedSYN: 5},
		programs:  []events.ProgramStats{{Name: "lw_tp_state", Stage: events.StageRegistry, RecursionMisses: 2, RunTime: 1500 * time.Millisecond, RunCount: 7}},
		hooks: []events.Hook{
			{Stage: events.StageSYN, Mode: events.ModeTracepoint},
			{Stage: events.StageHandshake, Mode: events.ModeNone},
		},
	}
}

func TestListenerCounters(t *testing.T) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop())
	want := `
# HELP listenwatch_listener_connections_accepted_total Connections returned to the application by accept().
# TYPE listenwatch_listener_connections_accepted_total counter
listenwatch_listener_connections_accepted_total{addr="10.0.0.5",netns="4026531840",port="8080"} 10
# HELP listenwatch_listener_handshakes_completed_total Handshakes completed: child sockets put in the accept queue.
# TYPE listenwatch_listener_handshakes_completed_total counter
listenwatch_listener_handshakes_completed_total{addr="10.0.0.5",netns="4026531840",port="8080"} 11
# HELP listenwatch_listener_info Processes that own the listener (called listen() or accept() on it and still run; up to 4) and, in Kubernetes, their pod UID, namespace, pod and container names (from the container runtime; names empty without one): one series per process. When no owner runs, the pod whose sandbox owns the network namespace. Join: * on(netns, addr, port) group_left(namespace, pod) listenwatch_listener_info.
# TYPE listenwatch_listener_info gauge
listenwatch_listener_info{addr="10.0.0.5",comm="nginx",container="",namespace="",netns="4026531840",pid="4242",pod="",pod_uid="",port="8080"} 1
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

var allFamilies = Options{LatencySplit: true, QueueLengthHistogram: true}

func TestHistogramsAndIncomplete(t *testing.T) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop()).WithOptions(allFamilies)
	const ms = time.Millisecond
	// A complete connection: 40us handshake, 20ms in the queue.
	c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT,
		SYNACKSent: 1000 * ms, Established: 1000*ms + 40*time.Microsecond, Accepted: 1020*ms + 40*time.Microsecond})
	// The agent started while this one was queued: counted, not timed.
	c.Observe(&events.Conn{Listener: web, Accepted: 1030 * ms})
	// Unattributed: no series at all.
	c.Observe(&events.Conn{Listener: events.ListenerKey{Netns: 1, Addr: netip.MustParseAddr("10.9.9.9"), Port: 1}, Flags: events.FlagNoListener, Accepted: 5})

	want := `
# HELP listenwatch_accept_queue_wait_seconds Time a completed connection waited in the accept queue until accept() returned it.
# TYPE listenwatch_accept_queue_wait_seconds histogram
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.0001"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.0005"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.001"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.005"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.01"} 0
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.05"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.1"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.25"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="0.5"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="1"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="3"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="10"} 1
listenwatch_accept_queue_wait_seconds_bucket{addr="10.0.0.5",netns="4026531840",port="8080",le="+Inf"} 1
listenwatch_accept_queue_wait_seconds_sum{addr="10.0.0.5",netns="4026531840",port="8080"} 0.02
listenwatch_accept_queue_wait_seconds_count{addr="10.0.0.5",netns="4026531840",port="8080"} 1
# HELP listenwatch_accept_queue_wait_time_seconds_total Sum of the accept-queue waits (handshake complete -> accept() returned) of accepted connections: the application's share of the latency.
# TYPE listenwatch_accept_queue_wait_time_seconds_total counter
listenwatch_accept_queue_wait_time_seconds_total{addr="10.0.0.5",netns="4026531840",port="8080"} 0.02
# HELP listenwatch_incomplete_connections_total Accepted connections with a stage not observed (agent started later, SYN cookie, or record evicted): counted, never timed.
# TYPE listenwatch_incomplete_connections_total counter
listenwatch_incomplete_connections_total{addr="10.0.0.5",missing="handshake",netns="4026531840",port="8080"} 1
listenwatch_incomplete_connections_total{addr="10.0.0.5",missing="invalid",netns="4026531840",port="8080"} 0
listenwatch_incomplete_connections_total{addr="10.0.0.5",missing="syn",netns="4026531840",port="8080"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"listenwatch_accept_queue_wait_seconds", "listenwatch_accept_queue_wait_time_seconds_total", "listenwatch_incomplete_connections_total"); err != nil {
		t.Fatal(err)
	}
	// Exactly one listener has series: the unattributed event made none.
	if n := testutil.CollectAndCount(c, "listenwatch_syn_to_accept_seconds"); n != 1 {
		t.Fatalf("syn_to_accept series = %d, want 1", n)
	}
}

func TestBucketEdges(t *testing.T) {
	var h hist
	h.observe(100 * time.Microsecond) // le="0.0001" includes its bound
	h.observe(100*time.Microsecond + 1)
	h.observe(11 * time.Second) // +Inf
	n, _, b := h.snapshot()
	if n != 3 || b[100e-6] != 1 || b[500e-6] != 2 || b[10] != 2 {
		t.Fatalf("count %d buckets %v", n, b)
	}
}

func TestLint(t *testing.T) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop()).WithOptions(allFamilies)
	c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake, SYNACKSent: 1, Established: 2, Accepted: 3})
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

// TestScrapeSourceSuccess: each source's failure is attributed to it
// (node_exporter's scrape_collector_success), not summed into one count.
func TestScrapeSourceSuccess(t *testing.T) {
	f := newFake()
	f.errCounters = errors.New("map gone")
	c := New(f, procfs.FS{}, zerolog.Nop())
	want := `
# HELP listenwatch_scrape_source_success 1 when this scrape read the source (listeners, counters, programs) from the kernel, 0 when it failed (the error is logged).
# TYPE listenwatch_scrape_source_success gauge
listenwatch_scrape_source_success{source="counters"} 0
listenwatch_scrape_source_success{source="listeners"} 1
listenwatch_scrape_source_success{source="programs"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "listenwatch_scrape_source_success"); err != nil {
		t.Fatal(err)
	}
	// The listeners were read: their series are still there.
	if n := testutil.CollectAndCount(c, "listenwatch_listener_syns_received_total"); n != 1 {
		t.Fatalf("syns series %d, want 1", n)
	}
}

// TestDescribeMatchesCollect: every family Collect emits is described
// (one list feeds both), and every described family is emitted.
func TestDescribeMatchesCollect(t *testing.T) {
	for _, o := range []Options{{}, {LatencySplit: true}, {QueueLengthHistogram: true}, allFamilies} {
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) { describeMatchesCollect(t, o) })
	}
}

func describeMatchesCollect(t *testing.T, o Options) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop()).WithOptions(o)
	c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake, SYNACKSent: 1, Established: 2, Accepted: 3, AcceptQueueLen: 1})
	described := map[string]bool{}
	dch := make(chan *prometheus.Desc, 100)
	c.Describe(dch)
	close(dch)
	for d := range dch {
		described[d.String()] = true
	}
	mch := make(chan prometheus.Metric, 1000)
	c.Collect(mch)
	close(mch)
	emitted := map[string]bool{}
	for m := range mch {
		if !described[m.Desc().String()] {
			t.Errorf("collected but not described: %s", m.Desc())
		}
		emitted[m.Desc().String()] = true
	}
	for d := range described {
		if !emitted[d] {
			t.Errorf("described but never collected: %s", d)
		}
	}
}

// TestHistogramSizesFollowBounds: a bucket beyond the last bound lands in
// +Inf, whatever the number of bounds (the arrays are sized from them).
func TestHistogramSizesFollowBounds(t *testing.T) {
	var h hist
	h.observe(time.Hour)
	if n, _, b := h.snapshot(); n != 1 || len(b) != len(bucketBounds) || b[bucketBounds[len(bucketBounds)-1]] != 0 {
		t.Fatalf("latency: count %d, %d buckets %v", n, len(b), b)
	}
	var q lenHist
	q.observe(1 << 20)
	q.observe(0)
	q.observe(3)
	if n, _, b := q.snapshot(); n != 3 || len(b) != len(queueBounds) || b[0] != 1 || b[2] != 1 || b[4] != 2 || b[65536] != 2 {
		t.Fatalf("queue length: count %d buckets %v", n, b)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop())
	conn := &events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT, SYNACKSent: 1, Established: 2, Accepted: 3}
	c.Observe(conn) // first sight of the listener allocates its state
	if a := testing.AllocsPerRun(1000, func() { c.Observe(conn) }); a != 0 {
		t.Fatalf("Observe allocates %.1f times per event", a)
	}
}

func BenchmarkObserve(b *testing.B) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop())
	conn := &events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT, SYNACKSent: 1000, Established: 41000, Accepted: 20041000}
	b.ReportAllocs()
	for b.Loop() {
		c.Observe(conn)
	}
}

func TestClosedListenerSeriesEvicted(t *testing.T) {
	f := newFake()
	c := New(f, procfs.FS{}, zerolog.Nop())
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

// TestListenerInfoEveryOwner: one listener_info series per owning process
// that still runs (read through the procfs root), pods included; a
// listener whose owners all exited keeps the one the kernel last saw.
func TestListenerInfoEveryOwner(t *testing.T) {
	f := newFake()
	f.listeners[0].Owners = [events.OwnersMax]uint32{4242, 4343, 5555, 4242} // 5555 exited; 4242 twice
	gone := events.Listener{Key: events.ListenerKey{Netns: 1, Addr: netip.MustParseAddr("10.0.0.6"), Port: 80}, PID: 7, Comm: "old", Owners: [events.OwnersMax]uint32{5555}}
	f.listeners = append(f.listeners, gone)
	c := New(f, procfs.New("testdata/proc"), zerolog.Nop())
	want := `
# HELP listenwatch_listener_info Processes that own the listener (called listen() or accept() on it and still run; up to 4) and, in Kubernetes, their pod UID, namespace, pod and container names (from the container runtime; names empty without one): one series per process. When no owner runs, the pod whose sandbox owns the network namespace. Join: * on(netns, addr, port) group_left(namespace, pod) listenwatch_listener_info.
# TYPE listenwatch_listener_info gauge
listenwatch_listener_info{addr="10.0.0.5",comm="nginx",container="",namespace="",netns="4026531840",pid="4242",pod="",pod_uid="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",port="8080"} 1
listenwatch_listener_info{addr="10.0.0.5",comm="envoy",container="",namespace="",netns="4026531840",pid="4343",pod="",pod_uid="4c7a2e1b-93f0-4d2a-8a8e-0b6a7f7e2c11",port="8080"} 1
listenwatch_listener_info{addr="10.0.0.6",comm="old",container="",namespace="",netns="1",pid="7",pod="",pod_uid="",port="80"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "listenwatch_listener_info"); err != nil {
		t.Fatal(err)
	}
}

// TestSeriesPerListener: the default costs at most 40 series per listener
// (the budget a large cluster can pay), each option what it says.
func TestSeriesPerListener(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want int
	}{{Options{}, 38}, {Options{LatencySplit: true}, 68}, {Options{QueueLengthHistogram: true}, 59}, {allFamilies, 89}} {
		c := New(newFake(), procfs.FS{}, zerolog.Nop()).WithOptions(tc.o)
		c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake, SYNACKSent: 1, Established: 2, Accepted: 3, AcceptQueueLen: 1})
		if n := seriesOf(t, c, web); n != tc.want {
			t.Errorf("%+v: %d series per listener, want %d", tc.o, n, tc.want)
		}
	}
}

// seriesOf counts the series (histogram buckets, _sum and _count each)
// whose labels name listener k.
func seriesOf(t *testing.T, c prometheus.Collector, k events.ListenerKey) int {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			ok := 0
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "netns":
					ok += b2i(lp.GetValue() == fmt.Sprint(k.Netns))
				case "addr":
					ok += b2i(lp.GetValue() == k.Addr.String())
				case "port":
					ok += b2i(lp.GetValue() == fmt.Sprint(k.Port))
				}
			}
			if ok != 3 {
				continue
			}
			if h := m.GetHistogram(); h != nil {
				n += len(h.GetBucket()) + 1 + 2 // buckets, +Inf, _sum, _count
			} else {
				n++
			}
		}
	}
	return n
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// By default the split is exported as sums only: the sums must still be
// exact though no bucket is kept.
func TestDefaultSumsWithoutSplit(t *testing.T) {
	c := New(newFake(), procfs.FS{}, zerolog.Nop())
	c.Observe(&events.Conn{Listener: web, Flags: events.FlagHandshake | events.FlagSYNFromRTT, AcceptQueueLen: 3,
		SYNACKSent: time.Second, Established: time.Second + 40*time.Microsecond, Accepted: time.Second + 40*time.Microsecond + 20*time.Millisecond})
	want := `
# HELP listenwatch_accept_queue_wait_time_seconds_total Sum of the accept-queue waits (handshake complete -> accept() returned) of accepted connections: the application's share of the latency.
# TYPE listenwatch_accept_queue_wait_time_seconds_total counter
listenwatch_accept_queue_wait_time_seconds_total{addr="10.0.0.5",netns="4026531840",port="8080"} 0.02
# HELP listenwatch_handshake_seconds_total Sum of the handshake durations (SYN-ACK sent -> final ACK) of accepted connections: divided by the rate of listenwatch_listener_connections_accepted_total it is the mean; compare with listenwatch_accept_queue_wait_time_seconds_total (network or application?).
# TYPE listenwatch_handshake_seconds_total counter
listenwatch_handshake_seconds_total{addr="10.0.0.5",netns="4026531840",port="8080"} 4e-05
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "listenwatch_handshake_seconds_total", "listenwatch_accept_queue_wait_time_seconds_total"); err != nil {
		t.Fatal(err)
	}
	for _, s := range *c.listeners.Load() {
		if n, _, _ := s.handshake.snapshot(); n != 0 {
			t.Errorf("handshake buckets kept without --metrics.latency-split: %d", n)
		}
		if n, _, _ := s.queueLen.snapshot(); n != 0 {
			t.Errorf("queue-length histogram fed without its option: %d", n)
		}
	}
}

func tenThousand() *fakeSource {
	f := newFake()
	f.listeners = nil
	for i := range 10000 {
		k := events.ListenerKey{Netns: 4026531840 + uint32(i/100), Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(30000 + i%100)}
		f.listeners = append(f.listeners, events.Listener{Key: k, Sockets: 1, Backlog: 128, PID: 1 << 30, Comm: "srv"})
	}
	return f
}

// BenchmarkScrape10k is one /metrics of a node with 10,000 idle listeners,
// as the agent serves it (Handler). The PIDs do not exist: owner reads
// fail fast, as for exited processes.
func BenchmarkScrape10k(b *testing.B) {
	h := New(tenThousand(), procfs.FS{}, zerolog.Nop()).Handler(prometheus.NewRegistry(), 1, zerolog.Nop())
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		w.Body = nil // discard: the encoding is measured, not a copy
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkScrape10kRegistry is the same through a registry (Collect) and
// the text encoder: what /metrics cost before Handler, side by side.
func BenchmarkScrape10kRegistry(b *testing.B) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(New(tenThousand(), procfs.FS{}, zerolog.Nop()))
	b.ReportAllocs()
	for b.Loop() {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			enc.Encode(mf)
		}
	}
}

// TestHandlerIsCollect: /metrics's direct path writes exactly the series
// a registry writes from Collect (every family, label, value, escaping,
// histograms and info included, each option on), plus what is registered
// beside it; gzip when asked; 503 beyond the concurrent scrapes allowed.
func TestHandlerIsCollect(t *testing.T) {
	f := newFake()
	f.listeners = append(f.listeners, events.Listener{
		Key:   events.ListenerKey{Netns: 7, Addr: netip.MustParseAddr("::"), Port: 443},
		Drops: [events.DropReasons]uint64{1, 2, 3, 4, 5}, AcceptEMFILE: 6, AcceptENFILE: 7, Sockets: 1,
		Owners: [events.OwnersMax]uint32{uint32(os.Getpid()), 1 << 30}, PID: uint32(os.Getpid()), Comm: "test",
	})
	f.listeners[0].Comm = `we"ird\name` // escaped in label values
	f.listeners[0].PID = 1 << 30
	c := New(f, procfs.FS{}, zerolog.Nop()).WithOptions(Options{LatencySplit: true, QueueLengthHistogram: true})
	for i := range 50 {
		c.Observe(&events.Conn{Listener: f.listeners[1].Key, Flags: events.FlagHandshake | events.FlagSYNExact,
			SYNACKSent: time.Millisecond, Established: 2 * time.Millisecond, Accepted: time.Duration(3+i) * time.Millisecond, AcceptQueueLen: uint32(i)})
	}
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "beside", Help: "registered beside"}))

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := prometheus.Gatherers{reg, other}.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&want, mf); err != nil {
			t.Fatal(err)
		}
	}
	lines := func(s string) []string {
		l := strings.Split(strings.TrimSpace(s), "\n")
		slices.Sort(l) // order of families and series is not part of the format
		return l
	}
	h := c.Handler(other, 1, zerolog.Nop())
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if got := lines(w.Body.String()); !slices.Equal(got, lines(want.String())) {
		t.Fatalf("the paths differ:\nregistry:\n%s\ndirect:\n%s", want.String(), w.Body.String())
	}
	if n := len(lines(want.String())); n < 150 {
		t.Fatalf("only %d lines: the test exercises too little", n)
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
	// Text the Prometheus parser accepts, gzip when asked.
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	w = httptest.NewRecorder()
	h.ServeHTTP(w, req)
	zr, err := gzip.NewReader(w.Body)
	if err != nil || w.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip: %v %q", err, w.Header().Get("Content-Encoding"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := p.TextToMetricFamilies(zr); err != nil {
		t.Fatalf("the Prometheus text parser refuses it: %v", err)
	}
}

// TestHandlerBoundsConcurrentScrapes: beyond the allowed concurrent
// scrapes, a 503 at once instead of another collection.
func TestHandlerBoundsConcurrentScrapes(t *testing.T) {
	f := &blockingSource{fakeSource: newFake(), entered: make(chan struct{}), release: make(chan struct{})}
	h := New(f, procfs.FS{}, zerolog.Nop()).Handler(prometheus.NewRegistry(), 1, zerolog.Nop())
	done := make(chan int)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		done <- w.Code
	}()
	<-f.entered
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != http.StatusServiceUnavailable {
		t.Errorf("second concurrent scrape: %d, want 503", w.Code)
	}
	close(f.release)
	if code := <-done; code != 200 {
		t.Errorf("first scrape: %d", code)
	}
}

type blockingSource struct {
	*fakeSource
	entered, release chan struct{}
	once             sync.Once
}

func (b *blockingSource) Listeners() ([]events.Listener, error) {
	b.once.Do(func() { close(b.entered); <-b.release })
	return b.fakeSource.Listeners()
}
