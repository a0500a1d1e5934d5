//go:build soak

package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// soakAgent is one life of the agent under soak: a tracer, its reader and
// its collector, as `listenwatch run` wires them.
type soakAgent struct {
	tr     *loader.Tracer
	col    *exporter.Collector
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startSoakAgent(t *testing.T) *soakAgent {
	t.Helper()
	cfg := testCfg
	cfg.ClosedRetention = 2 * time.Second
	tr, err := loader.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	a := &soakAgent{tr: tr, col: exporter.New(tr, procfs.FS{}, zerolog.Nop()), reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	a.reg.MustRegister(a.col)
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- tr.Run(ctx, a.col.Observe, nil) }()
	return a
}

func (a *soakAgent) stop(t *testing.T) {
	a.cancel()
	if err := <-a.done; err != nil {
		t.Errorf("reader: %v", err)
	}
	if err := a.tr.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

func (a *soakAgent) listener(t *testing.T, k events.ListenerKey) events.Listener {
	t.Helper()
	l, ok := lookup(t, a.tr, k)
	if !ok {
		t.Fatalf("soak agent: listener %s not registered", k)
	}
	return l
}

// soakNS are the namespaces the soak made: what it checks for leftovers
// (other traffic on the host is none of its business).
var soakNS = map[uint32]bool{}

func newSoakNS(t *testing.T) *netnstest.NS {
	ns := newNS(t)
	soakNS[ns.Inode] = true
	return ns
}

// leftovers counts the soak namespaces' registry entries, open listeners,
// join-table entries and histogram series.
func (a *soakAgent) leftovers(t *testing.T) (entries, open, conns, series int) {
	t.Helper()
	ls, err := a.tr.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if soakNS[l.Key.Netns] {
			entries++
			if l.Sockets > 0 {
				open++
			}
		}
	}
	pending, err := a.tr.PendingByNetns()
	if err != nil {
		t.Fatal(err)
	}
	for ns := range soakNS {
		conns += pending[ns]
		series += a.col.ListenersIn(ns)
	}
	return entries, open, conns, series
}

func rssBytes(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// TestSoak (make soak; LISTENWATCH_SOAK sets the duration, 10m by
// default): cycles of listener churn across namespaces, a connection
// storm, an accept-queue overflow and a spoofed SYN flood, with the agent
// restarted halfway. Every cycle's counts are exact against the kernel's;
// at the end no map entry, series or goroutine is left behind and RSS is
// within 10% of where it was after the first cycle.
func TestSoak(t *testing.T) {
	need(t, events.StageSYN, events.StageHandshake, events.StageAccept)
	total := 10 * time.Minute
	if v, err := time.ParseDuration(os.Getenv("LISTENWATCH_SOAK")); err == nil {
		total = v
	}
	a := startSoakAgent(t)
	defer func() { a.stop(t) }()

	var (
		start                    = time.Now()
		restarted                bool
		rss0                     uint64
		goroutines0              int
		churned, stormed, floods uint64
		cycle                    int
	)
	for cycle = 1; cycle == 1 || time.Since(start) < total; cycle++ {
		if !restarted && time.Since(start) > total/2 {
			a.stop(t)
			a = startSoakAgent(t)
			restarted = true
			t.Logf("cycle %d: agent restarted", cycle)
		}
		churned += soakChurn(t, 4, 10*time.Second)
		stormed += soakStorm(t, a, 500)
		soakOverflow(t, a, 100)
		floods += soakFlood(t, a, 5)
		testutil.CollectAndCount(a.col) // a scrape, as Prometheus would
		if cycle == 1 {
			runtime.GC()
			debug.FreeOSMemory()
			rss0, goroutines0 = rssBytes(t), runtime.NumGoroutine()
		}
		if t.Failed() {
			t.Fatalf("cycle %d failed", cycle)
		}
	}

	// Everything the cycles opened is closed: after the retention and a
	// sweep, the registry, the connection table and the series are empty
	// of them, and nothing else grew.
	eventually(t, settle, func() (bool, string) {
		testutil.CollectAndCount(a.col)
		testutil.CollectAndCount(a.col)
		entries, open, conns, series := a.leftovers(t)
		return entries == 0 && conns == 0 && series == 0,
			fmt.Sprintf("soak namespaces: listener entries %d (open %d), connection entries %d, series %d", entries, open, conns, series)
	})
	runtime.GC()
	debug.FreeOSMemory()
	rss1, goroutines1 := rssBytes(t), runtime.NumGoroutine()
	t.Logf("%d cycles in %v: %d listeners churned, %d connections, %d SYNs flooded; RSS %.1f -> %.1f MiB; goroutines %d -> %d",
		cycle-1, time.Since(start).Round(time.Second), churned, stormed, floods,
		float64(rss0)/(1<<20), float64(rss1)/(1<<20), goroutines0, goroutines1)
	if float64(rss1) > 1.1*float64(rss0) {
		t.Errorf("RSS grew from %.1f to %.1f MiB (more than 10%%)", float64(rss0)/(1<<20), float64(rss1)/(1<<20))
	}
	if goroutines1 > goroutines0+2 {
		t.Errorf("goroutines %d -> %d", goroutines0, goroutines1)
	}
}

// soakChurn opens and closes listeners in n namespaces for d, as fast as
// one goroutine does, and returns how many.
func soakChurn(t *testing.T, n int, d time.Duration) uint64 {
	var nss []*netnstest.NS
	for range n {
		nss = append(nss, newSoakNS(t))
	}
	var count uint64
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		ns := nss[rand.IntN(len(nss))]
		port := uint16(20000 + rand.IntN(10000))
		err := ns.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				return nil // port taken in this namespace: next
			}
			return unix.Listen(fd, 16)
		})
		if err != nil {
			t.Fatal(err)
		}
		count++
		time.Sleep(2 * time.Millisecond) // a few hundred per second
	}
	return count
}

// soakStorm: n connections to an accepting listener, counted exactly.
func soakStorm(t *testing.T, a *soakAgent, n int) uint64 {
	ns := newSoakNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:9100")
	fd := listen(t, ns, addr, 128)
	go serve(fd)
	defer func() { unix.Shutdown(fd, unix.SHUT_RDWR) }()
	before, _ := ns.Netstat()
	connectN(t, ns, addr, n)
	after, _ := ns.Netstat()
	opens := after["Tcp.PassiveOpens"] - before["Tcp.PassiveOpens"]
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	eventually(t, settle, func() (bool, string) {
		l := a.listener(t, key)
		return l.Accepted == opens, fmt.Sprintf("storm: accepted %d, kernel PassiveOpens %d", l.Accepted, opens)
	})
	if l := a.listener(t, key); l.SYNs != opens || l.Handshakes != opens {
		t.Errorf("storm: syns %d handshakes %d, kernel PassiveOpens %d", l.SYNs, l.Handshakes, opens)
	}
	return opens
}

// soakOverflow: an accept-queue overflow, counted exactly.
func soakOverflow(t *testing.T, a *soakAgent, clients int) {
	ns := newSoakNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:9101")
	fd := listen(t, ns, addr, 4)
	before, _ := ns.Netstat()
	burst(t, ns, addr, clients)
	unix.Close(fd)
	after, _ := ns.Netstat()
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	l := a.listener(t, key)
	d := netnstest.Delta(before, after, "TcpExt.ListenOverflows", "TcpExt.ListenDrops")
	if d["TcpExt.ListenOverflows"] == 0 || l.Overflows() != d["TcpExt.ListenOverflows"] || l.TotalDrops() != d["TcpExt.ListenDrops"] {
		t.Errorf("overflow: listenwatch %d/%d, kernel ListenOverflows/ListenDrops %v", l.Overflows(), l.TotalDrops(), d)
	}
}

// soakFlood: a spoofed SYN flood for secs seconds; every SYN counted.
func soakFlood(t *testing.T, a *soakAgent, secs int) uint64 {
	server, peer := floodPair(t)
	soakNS[server.Inode], soakNS[peer.Inode] = true, true
	addr := netip.MustParseAddrPort("10.88.0.1:9102")
	fd := listen(t, server, addr, 8)
	before, _ := server.Netstat()
	if err := peer.Run("timeout", "-s", "INT", strconv.Itoa(secs), "hping3", "-q", "-S", "-p", "9102",
		"--flood", "--rand-source", addr.Addr().String()); err != nil && !strings.Contains(err.Error(), "exit status") {
		t.Fatal(err)
	}
	unix.Close(fd)
	after, _ := server.Netstat()
	key := events.ListenerKey{Netns: server.Inode, Addr: addr.Addr(), Port: addr.Port()}
	in := after["Tcp.InSegs"] - before["Tcp.InSegs"]
	if l := a.listener(t, key); l.SYNs != in || in < 1000 {
		t.Errorf("flood: SYNs seen %d, kernel InSegs %d", l.SYNs, in)
	}
	return in
}
