// Package integration proves listenwatch against the real kernel: real
// listeners in network namespaces the tests create, real clients, and the
// kernel's own counters as the oracle. Needs root.
package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// One tracer for the whole package, as on a node: tests tell their traffic
// apart by network namespace.
var (
	tracer    *loader.Tracer
	collector *exporter.Collector
	registry  *prometheus.Registry
	tap       = &eventTap{byClient: map[netip.AddrPort]events.Conn{}, watched: map[uint32]bool{}, drops: map[events.ListenerKey][]events.Drop{}}
	testMode  events.Mode
	testCfg   loader.Config // what the environment asked for; private tracers reuse it
)

// eventTap keeps the decoded connections of the namespaces a test
// watches, by client address, so the test can check each against what it
// measured itself. Only watched namespaces: a long run (the soak) must not
// grow the test process with every connection of the host.
type eventTap struct {
	mu       sync.Mutex
	byClient map[netip.AddrPort]events.Conn
	watched  map[uint32]bool
	drops    map[events.ListenerKey][]events.Drop // rate-limited in the kernel: bounded
}

// watch keeps the connections to listeners of one namespace until the
// test ends.
func (e *eventTap) watch(t testing.TB, netns uint32) {
	e.mu.Lock()
	e.watched[netns] = true
	e.mu.Unlock()
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(e.watched, netns)
		for a, c := range e.byClient {
			if c.Listener.Netns == netns {
				delete(e.byClient, a)
			}
		}
		for k := range e.drops {
			if k.Netns == netns {
				delete(e.drops, k)
			}
		}
	})
}

func (e *eventTap) add(c *events.Conn) {
	e.mu.Lock()
	if e.watched[c.Listener.Netns] {
		e.byClient[c.Client] = *c
	}
	e.mu.Unlock()
}

func (e *eventTap) addDrop(d *events.Drop) {
	e.mu.Lock()
	if e.watched[d.Listener.Netns] {
		e.drops[d.Listener] = append(e.drops[d.Listener], *d)
	}
	e.mu.Unlock()
}

// dropRecords are the drop records of a listener so far.
func (e *eventTap) dropRecords(k events.ListenerKey) []events.Drop {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]events.Drop(nil), e.drops[k]...)
}

func (e *eventTap) get(a netip.AddrPort) (events.Conn, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.byClient[a]
	return c, ok
}

// TestMain attaches listenwatch once. LISTENWATCH_TEST_HOOK_MODE forces a
// mode (the kernel matrix runs the suite once per mode).
func TestMain(m *testing.M) {
	if os.Getenv("LW_EMFILE_SERVER") != "" || os.Getenv("LW_REUSEPORT_LISTENER") != "" {
		os.Exit(m.Run()) // a helper server process: no tracer of its own
	}
	if os.Geteuid() != 0 {
		fmt.Println("integration tests need root (BPF, network namespaces): skipped")
		os.Exit(0)
	}
	var err error
	if v := os.Getenv("LISTENWATCH_TEST_HOOK_MODE"); v != "" {
		if testMode, err = events.ParseMode(v); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	cfg := loader.Config{Mode: testMode}
	if v := os.Getenv("LISTENWATCH_TEST_DISABLE_STAGE"); v != "" {
		st, err := events.ParseStage(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		cfg.Disabled = []events.Stage{st}
	}
	testCfg = cfg
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.InfoLevel)
	tracer, err = loader.Open(cfg, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "open tracer: %v\n", err)
		os.Exit(1)
	}
	// Every optional family: the tests check the split histograms too.
	collector = exporter.New(tracer, procfs.FS{}, log).WithOptions(allFamilies)
	registry = prometheus.NewRegistry()
	registry.MustRegister(collector)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tracer.Run(ctx, func(c *events.Conn) {
			collector.Observe(c)
			tap.add(c)
		}, tap.addDrop)
	}()
	code := m.Run()
	reportMisses(os.Stdout)
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintf(os.Stderr, "reader: %v\n", err)
		code = 1
	}
	tracer.Close()
	os.Exit(code)
}

// reportMisses prints the runs the kernel skipped, per program, if any: a
// skipped run is an event not seen, and the first suspect when a count
// comes out short (kprobe and classic tracepoint programs are skipped
// while any other of them runs on that CPU, e.g. one interrupted by a
// softirq that hits a hook).
func reportMisses(w io.Writer) {
	ps, err := tracer.Programs()
	if err != nil {
		fmt.Fprintf(w, "bpf programs: %v\n", err)
	}
	var b strings.Builder
	for _, p := range ps {
		if p.RecursionMisses > 0 {
			fmt.Fprintf(&b, " %s=%d", p.Name, p.RecursionMisses)
		}
	}
	if b.Len() == 0 {
		b.WriteString(" none")
	}
	fmt.Fprintf(w, "bpf program runs skipped by the kernel:%s\n", b.String())
}

var allFamilies = exporter.Options{LatencySplit: true, QueueLengthHistogram: true}

var nsSeq atomic.Uint32

// newNS creates a namespace that is deleted when the test ends.
func newNS(t testing.TB) *netnstest.NS {
	t.Helper()
	ns, err := netnstest.Create(fmt.Sprintf("lwt-%d-%d", os.Getpid(), nsSeq.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Delete() })
	return ns
}

// listen opens a plain TCP listener with an exact listen() backlog inside
// ns (Go's net.Listen always asks for somaxconn).
func listen(t testing.TB, ns *netnstest.NS, addr netip.AddrPort, backlog int) int {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		family := unix.AF_INET6
		var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
		if addr.Addr().Is4() {
			family = unix.AF_INET
			sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
		}
		var err error
		if fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("bind %s: %w", addr, err)
		}
		return unix.Listen(fd, backlog)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// acceptOne blocks in accept() and returns the client's address and the
// moment accept returned.
func acceptOne(fd int) (netip.AddrPort, time.Time, int, error) {
	nfd, sa, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
	at := time.Now()
	if err != nil {
		return netip.AddrPort{}, at, -1, err
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), at, nfd, nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), at, nfd, nil
	}
	return netip.AddrPort{}, at, nfd, fmt.Errorf("unexpected peer %T", sa)
}

// dial connects from inside ns and returns the connection and the moment
// connect() returned.
func dial(ns *netnstest.NS, to netip.AddrPort) (net.Conn, time.Time, error) {
	var (
		c  net.Conn
		at time.Time
	)
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", to.String(), dialTimeout)
		at = time.Now()
		return err
	})
	return c, at, err
}

// dialTimed is dial with both ends of connect() on the kernel's clock
// (CLOCK_MONOTONIC, which BPF's ktime is): what the kernel reports of this
// connection's handshake happened after the first.
func dialTimed(ns *netnstest.NS, to netip.AddrPort) (c net.Conn, begun, done time.Duration, err error) {
	err = ns.Do(func() error {
		var err error
		begun = mono()
		c, err = net.DialTimeout("tcp", to.String(), dialTimeout)
		done = mono()
		return err
	})
	return c, begun, done, err
}

// mono reads CLOCK_MONOTONIC, the clock of listenwatch's timestamps.
func mono() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return time.Duration(ts.Nano())
}

// acceptQueueLen is the kernel's count of connections waiting in a
// listener's accept queue (TCP_INFO's tcpi_unacked on a listening socket).
func acceptQueueLen(t testing.TB, fd int) int {
	t.Helper()
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatalf("TCP_INFO of the listener: %v", err)
	}
	return int(ti.Unacked)
}

func clientAddr(c net.Conn) netip.AddrPort {
	a := c.LocalAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// listener returns the kernel-side counters of one listener; a listener
// the registry does not hold fails the test (a zero value would make
// every later comparison meaningless).
func listener(t testing.TB, k events.ListenerKey) events.Listener {
	t.Helper()
	l, ok := lookup(t, tracer, k)
	if !ok {
		t.Fatalf("listener %s is not in listenwatch's registry", k)
	}
	return l
}

// lookup finds one listener in a tracer's registry.
func lookup(t testing.TB, tr *loader.Tracer, k events.ListenerKey) (events.Listener, bool) {
	t.Helper()
	ls, err := tr.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Key == k {
			return l, true
		}
	}
	return events.Listener{}, false
}

// settle bounds how long a test waits for something asynchronous (the
// reader drains the ring buffer every 100 ms) before it fails. It is a
// ceiling, not a measurement: a loaded machine takes longer, a quiet one
// returns as soon as the condition holds.
const settle = 30 * time.Second

// dialTimeout is generous for the same reason: a busy machine can delay a
// loopback handshake by seconds, which is not what these tests measure.
const dialTimeout = 30 * time.Second

// eventually polls cond until it holds or the timeout passes: the reader
// drains the ring buffer on a poll interval, so events arrive late.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout * slack())
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout*slack(), msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// family returns the metric family name from the test registry.
func family(t testing.TB, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// histogram returns one listener's histogram, or nil.
func histogram(t testing.TB, name string, k events.ListenerKey) *dto.Histogram {
	t.Helper()
	mf := family(t, name)
	if mf == nil {
		return nil
	}
	want := map[string]string{"netns": fmt.Sprint(k.Netns), "addr": k.Addr.String(), "port": fmt.Sprint(k.Port)}
	for _, m := range mf.Metric {
		if labelsMatch(m, want) {
			return m.GetHistogram()
		}
	}
	return nil
}

// counter returns the value of one counter series, or -1.
func counter(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mf := family(t, name)
	if mf == nil {
		return -1
	}
	for _, m := range mf.Metric {
		if labelsMatch(m, labels) {
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.Label {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func modeOf(s events.Stage) events.Mode {
	for _, h := range tracer.Hooks() {
		if h.Stage == s {
			return h.Mode
		}
	}
	return events.ModeNone
}

// need skips a test, saying why, when a stage it depends on is not
// attached on this kernel: a visible skip, never a silent pass.
func need(t testing.TB, stages ...events.Stage) {
	t.Helper()
	for _, s := range stages {
		for _, h := range tracer.Hooks() {
			if h.Stage == s && h.Mode == events.ModeNone {
				t.Skipf("stage %s is not attached on this kernel in this mode (%v): what it sees cannot be tested here", s, h.Err)
			}
		}
	}
}

// has reports whether a stage is attached.
func has(s events.Stage) bool { return modeOf(s) != events.ModeNone }

// slack scales timing bounds: 1 on real hardware; the kernel matrix runs
// under software emulation, 10 to 50 times slower, and sets it higher.
func slack() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("LISTENWATCH_TEST_TIME_SLACK")); err == nil && v > 0 {
		return time.Duration(v)
	}
	return 1
}

func stagesString() string {
	var b strings.Builder
	for _, h := range tracer.Hooks() {
		fmt.Fprintf(&b, "%s=%s ", h.Stage, h.Mode)
	}
	return b.String()
}
