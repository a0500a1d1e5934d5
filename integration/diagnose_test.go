package integration

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/diagnose"
	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// findingsFor keeps the findings of one listener.
func findingsFor(fs []diagnose.Finding, k events.ListenerKey) []diagnose.Finding {
	var out []diagnose.Finding
	for _, f := range fs {
		if f.Listener.Key == k {
			out = append(out, f)
		}
	}
	return out
}

// TestDiagnosisSomaxconn: listen(511) in a namespace whose somaxconn the
// test set to 8: the overflow hint must blame net.core.somaxconn with both
// values; a healthy listener next to it gets no hint.
func TestDiagnosisSomaxconn(t *testing.T) {
	need(t, events.StageSYN)
	ns := newNS(t)
	if err := ns.Sysctl("net.core.somaxconn", "8"); err != nil {
		t.Fatal(err)
	}
	sick := netip.MustParseAddrPort("127.0.0.1:8484")
	healthy := netip.MustParseAddrPort("127.0.0.1:8485")
	fd := listen(t, ns, sick, 511)
	go serve(listen(t, ns, healthy, 511))
	doc := diagnose.New(tracer, procfs.FS{}, time.Minute, zerolog.Nop())
	doc.Step()
	before, err := ns.Netstat()
	if err != nil {
		t.Fatal(err)
	}
	connectN(t, ns, healthy, 20)
	fds := connectNonBlocking(t, ns, sick, 40)
	time.Sleep(300 * time.Millisecond)
	closeAll(fds)
	unix.Close(fd)
	after, _ := ns.Netstat()
	all := doc.Step()
	fs := findingsFor(all, events.ListenerKey{Netns: ns.Inode, Addr: sick.Addr(), Port: sick.Port()})
	// The overflow, blamed on somaxconn, exactly once. On a slow machine
	// the SYN queue can fill too and the kernel then sends cookies: a
	// cookie finding is right when, and only when, the kernel sent some.
	var overflow []diagnose.Finding
	cookies := after["TcpExt.SyncookiesSent"] - before["TcpExt.SyncookiesSent"]
	for _, f := range fs {
		switch {
		case f.Cause == diagnose.CauseAcceptOverflow:
			overflow = append(overflow, f)
		case f.Cause == diagnose.CauseSYNCookies && cookies > 0:
		default:
			t.Errorf("finding not backed by the kernel's counters (SyncookiesSent +%d): %+v", cookies, f)
		}
	}
	if len(overflow) != 1 || overflow[0].Knob != "net.core.somaxconn" ||
		!strings.Contains(overflow[0].Message, "effective backlog 8 = min(listen() 511, net.core.somaxconn 8): raise net.core.somaxconn") {
		t.Fatalf("overflow findings: %+v (all: %+v)", overflow, fs)
	}
	t.Log(overflow[0].Message)
	if h := findingsFor(all, events.ListenerKey{Netns: ns.Inode, Addr: healthy.Addr(), Port: healthy.Port()}); len(h) != 0 {
		t.Errorf("healthy listener diagnosed: %+v", h)
	}
}

// TestDiagnosisSyncookiesOff: SYN-queue drops with cookies off name
// net.ipv4.tcp_syncookies.
func TestDiagnosisSyncookiesOff(t *testing.T) {
	need(t, events.StageSYN)
	server, peer := floodPair(t)
	if err := server.Sysctl("net.ipv4.tcp_syncookies", "0"); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort("10.88.0.1:8486")
	fd := listen(t, server, addr, 8)
	doc := diagnose.New(tracer, procfs.FS{}, time.Minute, zerolog.Nop())
	doc.Step()
	hping(t, peer, addr, 40)
	unix.Close(fd)
	fs := findingsFor(doc.Step(), events.ListenerKey{Netns: server.Inode, Addr: addr.Addr(), Port: addr.Port()})
	if len(fs) != 1 || fs[0].Cause != diagnose.CauseSYNQueueDrop || fs[0].Knob != "net.ipv4.tcp_syncookies" ||
		!strings.Contains(fs[0].Message, "with syncookies off (net.ipv4.tcp_syncookies 0): enable net.ipv4.tcp_syncookies") {
		t.Fatalf("findings: %+v", fs)
	}
	t.Log(fs[0].Message)
}
