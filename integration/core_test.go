package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/internal/netns"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TestHookModes fails when a stage silently ran in another mode than the
// one asked for: LISTENWATCH_TEST_EXPECT="syn=fentry,handshake=fentry,..."
// states the expectation; otherwise a forced mode must hold for every
// stage, and auto must attach every stage.
func TestHookModes(t *testing.T) {
	t.Logf("kernel modes: %s", stagesString())
	if exp := os.Getenv("LISTENWATCH_TEST_EXPECT"); exp != "" {
		for _, kv := range strings.Split(exp, ",") {
			st, mode, _ := strings.Cut(kv, "=")
			if got := modeOf(loader.Stage(st)); string(got) != mode {
				t.Errorf("stage %s runs in mode %s, expected %s", st, got, mode)
			}
		}
		return
	}
	for _, h := range tracer.Hooks() {
		switch {
		case h.Mode == loader.ModeNone && (h.Stage == loader.StageDrops || h.Stage == loader.StageSynackRetx):
			// One tracepoint each, missing on older kernels: say so.
			t.Logf("stage %s unavailable on this kernel: %v", h.Stage, h.Err)
		case h.Stage == loader.StageRegistry:
			if h.Mode != loader.ModeTracepoint {
				t.Errorf("registry: mode %s", h.Mode)
			}
		case testMode != "" && testMode != loader.ModeAuto && h.Mode != testMode:
			t.Errorf("stage %s runs in %s, forced %s", h.Stage, h.Mode, testMode)
		case h.Mode == loader.ModeNone:
			t.Errorf("stage %s not attached: %v", h.Stage, h.Err)
		}
	}
}

// TestSlowAcceptor: backlog 128, one accept every 20 ms, 50 clients at
// once. listenwatch's accept-queue waits must add up to what the test
// measured, per connection and in the histogram.
func TestSlowAcceptor(t *testing.T) {
	need(t, loader.StageSYN, loader.StageHandshake, loader.StageAccept)
	ns := newNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:8080")
	fd := listen(t, ns, addr, 128)
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	const n = 50

	type measured struct{ connected, accepted time.Time }
	var (
		mu   sync.Mutex
		byCl = map[netip.AddrPort]*measured{}
		wg   sync.WaitGroup
	)
	at := func(a netip.AddrPort) *measured {
		if byCl[a] == nil {
			byCl[a] = &measured{}
		}
		return byCl[a]
	}
	start := make(chan struct{})
	var conns []net.Conn
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, when, err := dial(ns, addr)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			at(clientAddr(c)).connected = when
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	for range n {
		time.Sleep(20 * time.Millisecond)
		cl, when, nfd, err := acceptOne(fd)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(nfd)
		mu.Lock()
		at(cl).accepted = when
		mu.Unlock()
	}
	for _, c := range conns {
		c.Close()
	}

	eventually(t, 5*time.Second, func() (bool, string) {
		h := histogram(t, "listenwatch_accept_queue_wait_seconds", key)
		l := listener(t, key)
		return l.Accepted == n && h != nil && h.GetSampleCount() == n,
			fmt.Sprintf("accepted_total %d, histogram %v (modes %s)", l.Accepted, h, stagesString())
	})
	l := listener(t, key)
	if l.SYNs != n || l.Handshakes != n {
		t.Errorf("syns %d handshakes %d, want %d each", l.SYNs, l.Handshakes, n)
	}

	var sumMeasured time.Duration
	for cl, m := range byCl {
		wait := m.accepted.Sub(m.connected)
		sumMeasured += wait
		c, ok := tap.get(cl)
		if !ok {
			t.Errorf("no event for client %s", cl)
			continue
		}
		tl := c.Timeline()
		if !tl.HasHandshake || !tl.HasQueueWait || !tl.HasTotal {
			t.Errorf("client %s: incomplete timeline %+v (flags %#x)", cl, tl, c.Flags)
			continue
		}
		if tl.Handshake >= 5*time.Millisecond*slack() {
			t.Errorf("client %s: loopback handshake %v >= 5ms", cl, tl.Handshake)
		}
		if d := tl.Total - (tl.Handshake + tl.QueueWait); d.Abs() > time.Millisecond {
			t.Errorf("client %s: SYN->accept %v != handshake %v + wait %v", cl, tl.Total, tl.Handshake, tl.QueueWait)
		}
		// The test sees connect() return after the final ACK left; the
		// kernel timestamps its arrival. With 50 goroutines waking at
		// once on 2 cores they are a few ms apart, but well under the
		// 20 ms between two accepts, so a connection matched to the
		// wrong event would fail here.
		if d := tl.QueueWait - wait; d.Abs() > 10*time.Millisecond*slack() {
			t.Errorf("client %s: listenwatch wait %v, measured %v", cl, tl.QueueWait, wait)
		}
	}
	h := histogram(t, "listenwatch_accept_queue_wait_seconds", key)
	got := h.GetSampleSum()
	want := sumMeasured.Seconds()
	// 5% on real hardware. Under emulation, on one vCPU, connect()
	// returns tens of ms after the handshake: the per-connection bound
	// above then limits the sum.
	tolerance := 0.05 * want
	if slack() > 1 {
		tolerance = math.Max(tolerance, float64(n)*(10*time.Millisecond*slack()).Seconds())
	}
	if math.Abs(got-want) > tolerance {
		t.Errorf("accept-queue wait sum %.4fs, measured %.4fs (off by %.1f%%)", got, want, 100*math.Abs(got-want)/want)
	}
	t.Logf("accept-queue wait sum: listenwatch %.4fs, measured %.4fs", got, want)
	hs := histogram(t, "listenwatch_handshake_duration_seconds", key)
	if below5ms := cumulative(hs, 0.005); hs.GetSampleCount() != n || (below5ms != n && slack() == 1) {
		t.Errorf("handshake histogram: %d samples, %d below 5ms; want %d", hs.GetSampleCount(), below5ms, n)
	}
	if tot := histogram(t, "listenwatch_syn_to_accept_seconds", key); tot.GetSampleCount() != n {
		t.Errorf("syn_to_accept samples %d, want %d", tot.GetSampleCount(), n)
	}
	// All 50 were queued before the first accept: the queue held 1, 2 ...
	// 50 as each arrived (two queued at once on two CPUs may read each
	// other's: a length off by one).
	q := histogram(t, "listenwatch_accept_queue_length_at_connection", key)
	if q.GetSampleCount() != n || math.Abs(q.GetSampleSum()-1275) > 50 ||
		cumulative(q, 64) != n || cumulative(q, 32) >= n {
		t.Errorf("accept-queue length histogram: %v (want 50 samples of 1..50, sum 1275)", q)
	}
}

func cumulative(h *dto.Histogram, le float64) uint64 {
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	return 0
}

// serve accepts everything on fd until it is closed.
func serve(fd int) {
	for {
		_, _, nfd, err := acceptOne(fd)
		if err != nil {
			return
		}
		unix.Close(nfd)
	}
}

// connectN makes n connections to addr from inside ns, one at a time.
func connectN(t *testing.T, ns *netns.NS, addr netip.AddrPort, n int) {
	t.Helper()
	for range n {
		c, _, err := dial(ns, addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// TestExactCounts: N connections accepted -> accepted_total grows by
// exactly N, per listener, with the kernel's PassiveOpens as oracle.
func TestExactCounts(t *testing.T) {
	need(t, loader.StageAccept)
	t.Run("ipv4", func(t *testing.T) {
		ns := newNS(t)
		exactCount(t, ns, netip.MustParseAddrPort("127.0.0.1:9000"), netip.MustParseAddrPort("127.0.0.1:9000"), 37)
	})
	t.Run("ipv6", func(t *testing.T) {
		ns := newNS(t)
		exactCount(t, ns, netip.MustParseAddrPort("[::1]:9000"), netip.MustParseAddrPort("[::1]:9000"), 23)
	})
	t.Run("dual-stack wildcard, IPv4 clients", func(t *testing.T) {
		ns := newNS(t)
		exactCount(t, ns, netip.MustParseAddrPort("[::]:9000"), netip.MustParseAddrPort("127.0.0.1:9000"), 11)
	})
	t.Run("go listener (MPTCP by default)", func(t *testing.T) {
		ns := newNS(t)
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:9001"); return }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		key := events.ListenerKey{Netns: ns.Inode, Addr: netip.MustParseAddr("127.0.0.1"), Port: 9001}
		connectN(t, ns, netip.MustParseAddrPort("127.0.0.1:9001"), 19)
		eventually(t, 5*time.Second, func() (bool, string) {
			l := listener(t, key)
			return l.Accepted == 19, fmt.Sprintf("accepted %d, want 19", l.Accepted)
		})
	})
	t.Run("same port in two namespaces", func(t *testing.T) {
		a, b := newNS(t), newNS(t)
		addr := netip.MustParseAddrPort("127.0.0.1:9000")
		fa, fb := listen(t, a, addr, 64), listen(t, b, addr, 64)
		go serve(fa)
		go serve(fb)
		connectN(t, a, addr, 13)
		connectN(t, b, addr, 29)
		ka := events.ListenerKey{Netns: a.Inode, Addr: addr.Addr(), Port: addr.Port()}
		kb := events.ListenerKey{Netns: b.Inode, Addr: addr.Addr(), Port: addr.Port()}
		eventually(t, 5*time.Second, func() (bool, string) {
			la, lb := listener(t, ka), listener(t, kb)
			return la.Accepted == 13 && lb.Accepted == 29, fmt.Sprintf("accepted %d and %d, want 13 and 29", la.Accepted, lb.Accepted)
		})
		if la, lb := listener(t, ka), listener(t, kb); (has(loader.StageSYN) && (la.SYNs != 13 || lb.SYNs != 29)) ||
			(has(loader.StageHandshake) && (la.Handshakes != 13 || lb.Handshakes != 29)) {
			t.Errorf("syns %d/%d handshakes %d/%d, want 13/29", la.SYNs, lb.SYNs, la.Handshakes, lb.Handshakes)
		}
		if !has(loader.StageSYN) || !has(loader.StageHandshake) {
			return
		}
		eventually(t, 5*time.Second, func() (bool, string) {
			ha := histogram(t, "listenwatch_syn_to_accept_seconds", ka)
			hb := histogram(t, "listenwatch_syn_to_accept_seconds", kb)
			return ha.GetSampleCount() == 13 && hb.GetSampleCount() == 29, "two distinct histogram series"
		})
	})
}

func exactCount(t *testing.T, ns *netns.NS, bind, to netip.AddrPort, n int) {
	fd := listen(t, ns, bind, 64)
	go serve(fd)
	before, err := ns.Netstat()
	if err != nil {
		t.Fatal(err)
	}
	key := events.ListenerKey{Netns: ns.Inode, Addr: bind.Addr(), Port: bind.Port()}
	base := listener(t, key)
	connectN(t, ns, to, n)
	after, _ := ns.Netstat()
	opens := after["Tcp.PassiveOpens"] - before["Tcp.PassiveOpens"]
	if opens != uint64(n) {
		t.Fatalf("kernel PassiveOpens %d, want %d: the test's own traffic is wrong", opens, n)
	}
	eventually(t, 5*time.Second, func() (bool, string) {
		l := listener(t, key)
		return l.Accepted-base.Accepted == opens, fmt.Sprintf("accepted_total grew %d, kernel PassiveOpens %d", l.Accepted-base.Accepted, opens)
	})
	l := listener(t, key)
	if has(loader.StageSYN) && l.SYNs-base.SYNs != opens {
		t.Errorf("syns +%d, want %d", l.SYNs-base.SYNs, opens)
	}
	if has(loader.StageHandshake) && l.Handshakes-base.Handshakes != opens {
		t.Errorf("handshakes +%d, want %d", l.Handshakes-base.Handshakes, opens)
	}
	if l.Sockets != 1 || l.PID != uint32(os.Getpid()) {
		t.Errorf("listener sockets %d pid %d, want 1 and %d", l.Sockets, l.PID, os.Getpid())
	}
}

// TestMetricsOverHTTP scrapes the exposition format over HTTP and checks
// every family's type, unit suffix and HELP with the Prometheus parser.
func TestMetricsOverHTTP(t *testing.T) {
	need(t, loader.StageSYN, loader.StageHandshake, loader.StageAccept)
	ns := newNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:7070")
	go serve(listen(t, ns, addr, 16))
	connectN(t, ns, addr, 3)
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	eventually(t, 5*time.Second, func() (bool, string) {
		return histogram(t, "listenwatch_syn_to_accept_seconds", key).GetSampleCount() == 3, "3 connections in the histogram"
	})

	srv := httptest.NewServer(promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	want := map[string]dto.MetricType{
		"listenwatch_listener_syns_received_total":        dto.MetricType_COUNTER,
		"listenwatch_listener_handshakes_completed_total": dto.MetricType_COUNTER,
		"listenwatch_listener_connections_accepted_total": dto.MetricType_COUNTER,
		"listenwatch_listener_sockets":                    dto.MetricType_GAUGE,
		"listenwatch_listener_backlog":                    dto.MetricType_GAUGE,
		"listenwatch_listener_info":                       dto.MetricType_GAUGE,
		"listenwatch_handshake_duration_seconds":          dto.MetricType_HISTOGRAM,
		"listenwatch_accept_queue_wait_seconds":           dto.MetricType_HISTOGRAM,
		"listenwatch_syn_to_accept_seconds":               dto.MetricType_HISTOGRAM,
		"listenwatch_accept_queue_length_at_connection":   dto.MetricType_HISTOGRAM,
		"listenwatch_listener_accept_queue_length":        dto.MetricType_GAUGE,
		"listenwatch_listener_syn_queue_length":           dto.MetricType_GAUGE,
		"listenwatch_listener_drops_total":                dto.MetricType_COUNTER,
		"listenwatch_listener_backlog_requested":          dto.MetricType_GAUGE,
		"listenwatch_incomplete_connections_total":        dto.MetricType_COUNTER,
		"listenwatch_hook_info":                           dto.MetricType_GAUGE,
		"listenwatch_ringbuf_lost_events_total":           dto.MetricType_COUNTER,
		"listenwatch_ringbuf_events_total":                dto.MetricType_COUNTER,
		"listenwatch_decode_errors_total":                 dto.MetricType_COUNTER,
		"listenwatch_unattributed_events_total":           dto.MetricType_COUNTER,
		"listenwatch_bpf_recursion_misses_total":          dto.MetricType_COUNTER,
	}
	for name, typ := range want {
		mf := mfs[name]
		if mf == nil {
			t.Errorf("%s missing from /metrics", name)
			continue
		}
		if mf.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, mf.GetType(), typ)
		}
		if len(mf.GetHelp()) < 20 {
			t.Errorf("%s: HELP %q too short", name, mf.GetHelp())
		}
	}
	var found bool
	for _, m := range mfs["listenwatch_syn_to_accept_seconds"].GetMetric() {
		if labelsMatch(m, map[string]string{"netns": fmt.Sprint(key.Netns), "addr": "127.0.0.1", "port": "7070"}) {
			found = true
			h := m.GetHistogram()
			if h.GetSampleCount() != 3 || len(h.GetBucket()) != 20 || h.GetBucket()[0].GetUpperBound() != 10e-6 || h.GetBucket()[18].GetUpperBound() != 10 {
				t.Errorf("syn_to_accept histogram: %v", h)
			}
		}
		for _, lp := range m.GetLabel() {
			if n := lp.GetName(); n != "netns" && n != "addr" && n != "port" {
				t.Errorf("unexpected label %s on a histogram", lp.GetName())
			}
		}
	}
	if !found {
		t.Errorf("no syn_to_accept series for the test listener")
	}
}

// openTracer starts a second, private tracer for tests that need their own
// configuration; it runs beside the shared one.
func openTracer(t *testing.T, cfg loader.Config) *loader.Tracer {
	t.Helper()
	cfg.Mode, cfg.Disabled = testCfg.Mode, testCfg.Disabled
	tr, err := loader.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// drain runs the reader until it has been idle for a while.
func drain(t *testing.T, tr *loader.Tracer, sink func(*events.Conn)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, sink) }()
	prev := uint64(math.MaxUint64)
	for {
		time.Sleep(300 * time.Millisecond)
		c, _ := tr.Counters()
		if c.Records == prev {
			break
		}
		prev = c.Records
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRingbufLossCounted: a 4 KiB ring buffer nobody reads overflows;
// every accepted connection is either a record or a counted loss.
func TestRingbufLossCounted(t *testing.T) {
	need(t, loader.StageAccept)
	// The reader does not run until the storm is over.
	tr := openTracer(t, loader.Config{RingbufSize: 4096, WakeupBytes: 4096})
	ns := newNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:7071")
	go serve(listen(t, ns, addr, 128))
	const n = 200 // 4 KiB holds about 46 records
	connectN(t, ns, addr, n)
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	eventually(t, 5*time.Second, func() (bool, string) {
		ls, _ := tr.Listeners()
		for _, l := range ls {
			if l.Key == key {
				return l.Accepted == n, fmt.Sprintf("accepted %d", l.Accepted)
			}
		}
		return false, "listener not registered"
	})
	drain(t, tr, func(*events.Conn) {})
	c, err := tr.Counters()
	if err != nil {
		t.Fatal(err)
	}
	// Every accept on the host (not only this test's) either became a
	// record or was counted lost.
	var accepted uint64
	ls, _ := tr.Listeners()
	for _, l := range ls {
		accepted += l.Accepted
	}
	accepted += c.UnattributedAccept
	if c.RingbufLost == 0 {
		t.Fatalf("no loss counted with a 4 KiB ring buffer and %d connections (records %d)", n, c.Records)
	}
	if c.Records+c.RingbufLost != accepted {
		t.Errorf("records %d + lost %d != accepted %d", c.Records, c.RingbufLost, accepted)
	}
	t.Logf("records %d lost %d accepted %d", c.Records, c.RingbufLost, accepted)

	// The loss reaches the metrics.
	col := exporter.New(tr, zerolog.Nop())
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "listenwatch_ringbuf_lost_events_total" {
			if v := mf.Metric[0].GetCounter().GetValue(); v != float64(c.RingbufLost) {
				t.Errorf("exported lost %v, counted %d", v, c.RingbufLost)
			}
			return
		}
	}
	t.Error("listenwatch_ringbuf_lost_events_total not exported")
}

// TestStartedMidConnection: connections completed before the agent
// started are accepted afterwards: counted, marked incomplete, never timed.
func TestStartedMidConnection(t *testing.T) {
	need(t, loader.StageAccept)
	ns := newNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:7072")
	fd := listen(t, ns, addr, 64)
	const n = 7
	var conns []net.Conn
	for range n {
		c, _, err := dial(ns, addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	tr := openTracer(t, loader.Config{})
	for range n {
		_, _, nfd, err := acceptOne(fd)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(nfd)
	}
	col := exporter.New(tr, zerolog.Nop())
	drain(t, tr, col.Observe)
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	mfs, _ := reg.Gather()
	labels := map[string]string{"netns": fmt.Sprint(key.Netns), "addr": "127.0.0.1", "port": "7072"}
	var incomplete float64
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if !labelsMatch(m, labels) {
				continue
			}
			switch mf.GetName() {
			case "listenwatch_incomplete_connections_total":
				incomplete += m.GetCounter().GetValue()
				if v := m.GetCounter().GetValue(); v != 0 && !labelsMatch(m, map[string]string{"missing": "handshake"}) {
					t.Errorf("incomplete %v with %v", v, m.Label)
				}
			case "listenwatch_handshake_duration_seconds", "listenwatch_accept_queue_wait_seconds", "listenwatch_syn_to_accept_seconds":
				if c := m.GetHistogram().GetSampleCount(); c != 0 {
					t.Errorf("%s has %d samples for connections whose handshake the agent never saw", mf.GetName(), c)
				}
			case "listenwatch_listener_connections_accepted_total":
				if v := m.GetCounter().GetValue(); v != n {
					t.Errorf("accepted %v, want %d", v, n)
				}
			}
		}
	}
	if incomplete != n {
		t.Errorf("incomplete connections %v, want %d", incomplete, n)
	}
}

// ourPrograms returns the IDs of the BPF programs loaded in the kernel
// whose names are listenwatch's.
func ourPrograms(t *testing.T) map[ebpf.ProgramID]bool {
	t.Helper()
	ids := map[ebpf.ProgramID]bool{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return ids
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "lw_") {
			ids[id] = true
		}
		p.Close()
	}
}

// TestCloseDetachesEverything: a second tracer adds programs; Close
// removes every one of them (nothing pinned, nothing left attached).
func TestCloseDetachesEverything(t *testing.T) {
	before := ourPrograms(t)
	tr, err := loader.Open(testCfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var added []ebpf.ProgramID
	for id := range ourPrograms(t) {
		if !before[id] {
			added = append(added, id)
		}
	}
	var attached int
	for _, h := range tr.Hooks() {
		attached += len(h.Programs)
	}
	if len(added) != attached || attached == 0 {
		t.Fatalf("open: %d programs appeared, hooks report %d", len(added), attached)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	// The kernel frees detached programs after an RCU grace period.
	eventually(t, 5*time.Second, func() (bool, string) {
		now := ourPrograms(t)
		left := 0
		for _, id := range added {
			if now[id] {
				left++
			}
		}
		return left == 0, fmt.Sprintf("after Close: %d of its %d programs still loaded", left, len(added))
	})
	if pinned, _ := os.ReadDir("/sys/fs/bpf"); len(pinned) > 0 {
		for _, p := range pinned {
			if strings.HasPrefix(p.Name(), "lw_") {
				t.Errorf("pinned: %s", p.Name())
			}
		}
	}
}
