package integration

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"golang.org/x/sys/unix"
)

// TestPacketsOnIdleCPUs: on a node, a listener's packets are handled in
// softirq on whichever CPU the NIC's interrupt (or RPS) picks, mostly
// interrupting the idle task, whose pid is 0 on every CPU. Here receive
// packet steering on the namespace's loopback hands every packet to a CPU
// the test's threads do not run on (they stay on CPU 0), so that several
// CPUs handle them from idle at once. Every connection must still be seen
// whole, and the drop counts must stay exact.
//
// kprobe mode once met its entry and return probes by thread: two CPUs in
// the idle task took each other's arguments, and a handshake was read with
// another's request sock or lost (auto mode on 6.1 hooks the handshake
// with kprobes). The kernel matrix runs this test in a guest with 4 vCPUs.
//
// Two subtests show problems not solved yet and run only with
// LISTENWATCH_TEST_OPEN_PROBLEMS=1 (README, Kernel matrix): in kprobe mode
// an accept-queue overflow with packets on three CPUs was now and then
// counted one drop short (a likely cause, a listener's close, fixed since:
// README), and packets steered to the CPU of the
// accepting thread lose SYN and handshake probes (the kernel drops every
// kprobe hit on a CPU while one of its kprobe handlers runs there, and the
// accept-error probe runs in process context on every accept).
func TestPacketsOnIdleCPUs(t *testing.T) {
	need(t, events.StageSYN, events.StageHandshake, events.StageAccept)
	if n := runtime.NumCPU(); n < 3 {
		t.Skipf("needs 3 CPUs (the test's own and two handling packets from idle), have %d", n)
	}
	t.Run("accepted", func(t *testing.T) {
		wholeTimelines(t, steeredNS(t, notCPU0()), 0)
	})
	t.Run("accept queue overflow", func(t *testing.T) {
		openProblem(t, "one SYN-time drop short now and then in kprobe mode with packets on three CPUs")
		ns := steeredNS(t, notCPU0())
		var o *overflow
		onCPU(t, 0, func() { o = startOverflow(t, ns, 200) })
		// The clients' SYN retransmits (1 s) come from their timers on
		// CPU 0, in softirq, while the steered packets are handled
		// elsewhere.
		time.Sleep(1500 * time.Millisecond)
		o.finish(t)
	})
	t.Run("accepted, packets on the accepting CPU", func(t *testing.T) {
		openProblem(t, "SYNs and handshakes lost in kprobe mode")
		// CPU 1 handles every packet, in softirq, also when it
		// interrupts the accepting thread inside the kernel.
		wholeTimelines(t, steeredNS(t, 1<<1), 1)
	})
}

// openProblem skips a subtest that shows a problem not solved yet, unless
// LISTENWATCH_TEST_OPEN_PROBLEMS=1 asks for it.
func openProblem(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("LISTENWATCH_TEST_OPEN_PROBLEMS") != "1" {
		t.Skipf("open problem (README, Kernel matrix: not solved): %s; LISTENWATCH_TEST_OPEN_PROBLEMS=1 runs it", what)
	}
}

// wholeTimelines: 2,000 connections from CPU 0, accepted by a thread on
// serverCPU: every one counted at each stage and seen whole.
func wholeTimelines(t *testing.T, ns *netnstest.NS, serverCPU int) {
	tap.watch(t, ns.Inode)
	addr := netip.MustParseAddrPort("127.0.0.1:8282")
	fd := listen(t, ns, addr, 1024)
	key := events.ListenerKey{Netns: ns.Inode, Addr: addr.Addr(), Port: addr.Port()}
	base := listener(t, key)
	const rounds, burst = 40, 50
	var clients []netip.AddrPort
	served := make(chan struct{})
	go func() {
		defer close(served)
		runtime.LockOSThread()
		var set unix.CPUSet
		set.Set(serverCPU)
		unix.SchedSetaffinity(0, &set) // the thread ends with serve's goroutine
		serve(fd)
	}()
	// Closing the listener does not wake a thread blocked in its
	// accept(): shut it down, and wait for the thread to end, so that
	// no accept of this subtest runs during the next.
	t.Cleanup(func() {
		unix.Shutdown(fd, unix.SHUT_RDWR)
		<-served
	})
	onCPU(t, 0, func() {
		for range rounds {
			fds := connectNonBlocking(t, ns, addr, burst)
			clients = append(clients, waitConnected(t, fds)...)
			closeAll(fds)
		}
	})
	n := uint64(len(clients))
	eventually(t, settle, func() (bool, string) {
		l := listener(t, key)
		return l.Accepted-base.Accepted == n, fmt.Sprintf("accepted %d, want %d", l.Accepted-base.Accepted, n)
	})
	l := listener(t, key)
	if l.SYNs-base.SYNs != n || l.Handshakes-base.Handshakes != n {
		t.Errorf("syns +%d handshakes +%d, want %d each", l.SYNs-base.SYNs, l.Handshakes-base.Handshakes, n)
	}
	eventually(t, settle, func() (bool, string) {
		missing := 0
		for _, c := range clients {
			if _, ok := tap.get(c); !ok {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d accepted connections without a record", missing, n)
	})
	bad := 0
	for _, c := range clients {
		conn, ok := tap.get(c)
		if !ok || conn.Flags&events.FlagHandshake == 0 || conn.SYNACKSent == 0 || conn.Established < conn.SYNACKSent || conn.Accepted < conn.Established {
			if bad++; bad <= 5 {
				t.Errorf("client %v: record %v %+v: want a whole timeline (handshake seen, SYN-ACK <= established <= accepted)", c, ok, conn)
			}
		}
	}
	t.Logf("%d connections, %d without a whole timeline", n, bad)
	if t.Failed() {
		var b strings.Builder
		reportMisses(&b)
		t.Log(strings.TrimSpace(b.String()))
	}
}

// steeredNS is a new namespace whose loopback hands every packet it
// receives to the CPUs in mask (receive packet steering).
func steeredNS(t *testing.T, mask uint64) *netnstest.NS {
	t.Helper()
	ns := newNS(t)
	// ip netns exec mounts the namespace's own sysfs.
	path := "/sys/class/net/lo/queues/rx-0/rps_cpus"
	if err := ns.Run("sh", "-c", fmt.Sprintf("echo %x > %s && cat %s > /dev/stderr", mask, path, path)); err != nil {
		t.Fatalf("receive packet steering on the namespace's loopback: %v", err)
	}
	return ns
}

// notCPU0 is the mask of every CPU but CPU 0, where the test's threads run.
func notCPU0() uint64 {
	var mask uint64
	for cpu := 1; cpu < min(runtime.NumCPU(), 64); cpu++ {
		mask |= 1 << cpu
	}
	return mask
}

// onCPU runs f on the calling goroutine's thread pinned to one CPU, and
// gives the thread its former CPUs back afterwards.
func onCPU(t *testing.T, cpu int, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("pin to CPU %d: %v", cpu, err)
	}
	defer unix.SchedSetaffinity(0, &old)
	f()
}

// waitConnected waits until every non-blocking connect on fds completed and
// returns the clients' addresses.
func waitConnected(t *testing.T, fds []int) []netip.AddrPort {
	t.Helper()
	out := make([]netip.AddrPort, 0, len(fds))
	deadline := time.Now().Add(settle)
	for _, fd := range fds {
		for {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			n, err := unix.Poll(pfd, 100)
			if err != nil && err != unix.EINTR {
				t.Fatal(err)
			}
			if n == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("connect did not complete in %v", settle)
			}
		}
		if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			t.Fatalf("connect: %v %v", err, unix.Errno(e))
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			t.Fatal(err)
		}
		a := sa.(*unix.SockaddrInet4)
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)))
	}
	return out
}
