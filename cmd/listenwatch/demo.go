package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/listenwatch/listenwatch/diagnose"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/views"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

const demoHelp = `usage: listenwatch demo [flags]

About 30 seconds that show what listenwatch is for (root needed). It
creates a throwaway network namespace (anonymous: it never appears in
ip netns list and dies with the demo, even if the demo is killed), starts
a deliberately slow server in it (backlog 8, 20 accept()s per second),
sends it normal traffic, a burst of 300 clients and a short SYN flood
(inside that namespace only), shows the live top view meanwhile (a plain
table every few seconds when not on a terminal), and ends with the
diagnosis sentences listenwatch produced. Ctrl-C or q ends it early; the
BPF programs are detached and the namespace is gone either way.

examples:
  sudo listenwatch demo
  sudo listenwatch demo --plain | tee demo.txt

flags:
`

// demoNS is an anonymous network namespace, created by one OS thread that
// stays in it and runs what must run there. It is held by that thread and
// the processes started from it only, so it vanishes when the demo ends,
// however it ends (a kill -9 included): nothing to clean up, and nothing
// ever shows in ip netns list.
type demoNS struct {
	inode uint64
	reqs  chan func()
	gone  chan struct{}
}

func newDemoNS() (*demoNS, error) {
	n := &demoNS{reqs: make(chan func()), gone: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(n.gone)
		// Locked and never unlocked: the thread ends with the goroutine
		// instead of serving another one from inside the namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("create a network namespace: %w", err)
			return
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			errc <- err
			return
		}
		n.inode = st.Ino
		errc <- nil
		for f := range n.reqs {
			f()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return n, n.do(func() error {
		// Loopback up, and the sysctls of a stock host, set rather than
		// inherited so the demo is the same everywhere.
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		ifr, err := unix.NewIfreq("lo")
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
		if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
		for k, v := range map[string]string{"net/ipv4/tcp_syncookies": "1", "net/core/somaxconn": "4096", "net/ipv4/tcp_abort_on_overflow": "0"} {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return err
			}
		}
		return nil
	})
}

// do runs f on the namespace's thread.
func (n *demoNS) do(f func() error) error {
	errc := make(chan error, 1)
	n.reqs <- func() { errc <- f() }
	return <-errc
}

// close ends the thread; the namespace goes with its last process.
func (n *demoNS) close() {
	close(n.reqs)
	<-n.gone
}

// socket makes a socket inside the namespace; it stays there wherever it
// is used from.
func (n *demoNS) socket(typ, proto int) (int, error) {
	var fd int
	err := n.do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, proto)
		return err
	})
	return fd, err
}

// sink is where the flood's SYNs go and its SYN-ACKs vanish: 10.98.0.1,
// on one end of a veth pair whose other end, in the same namespace,
// answers no ARP for the spoofed sources (10.98.0.0/16), so their
// requests stay in the SYN queue, as a real flood's do. (From 127.0.0.1
// no SYN-ACK could be routed to them at all.) Needs ip(8); without it, no
// flood.
func (n *demoNS) sink() error {
	return n.do(func() error {
		// A child forked from this thread starts in its namespace.
		for _, args := range [][]string{
			{"link", "add", "lwsink", "type", "veth", "peer", "name", "lwsink1"},
			{"addr", "add", "10.98.0.1/16", "dev", "lwsink"},
			{"link", "set", "lwsink1", "up"},
			{"link", "set", "lwsink", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %v: %v: %s", args, err, out)
			}
		}
		return nil
	})
}

var (
	demoServer = [4]byte{127, 0, 0, 1} // the clients'
	demoSink   = [4]byte{10, 98, 0, 1} // the flood's
)

const demoPort = 8080

// synPacket is an IPv4 SYN from src:sport to 10.98.0.1:8080, checksummed.
func synPacket(b []byte, src [4]byte, sport uint16, seq uint32) []byte {
	b = b[:40]
	clear(b)
	b[0], b[8], b[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(b[2:], 40)
	copy(b[12:16], src[:])
	copy(b[16:20], demoSink[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b[:20], 0))
	t := b[20:]
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], demoPort)
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12], t[13] = 5<<4, 0x02 // data offset 5 words; SYN
	binary.BigEndian.PutUint16(t[14:], 65535)
	// Pseudo-header: addresses, protocol, TCP length.
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	sum += unix.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(t[16:], checksum(t, sum))
	return b
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// demo is one run: the namespace and the phases.
type demo struct {
	ns     *demoNS
	phase  atomic.Pointer[string]
	canSYN bool
}

func (d *demo) say(w io.Writer, s string) {
	d.phase.Store(&s)
	if w != nil {
		fmt.Fprintf(w, "\n== %s\n", s)
	}
}

// demoServerMain is the slow server, a process of its own in the demo's
// namespace (so that it has an owner to name, fds and limits to read):
// the listening socket is fd 3; one accept() every 50 ms, at most 20
// connections per second, each closed at once. It dies with the demo's
// namespace thread (parent-death signal).
func demoServerMain() int {
	const ln = 3
	unix.SetNonblock(ln, false)
	for {
		time.Sleep(50 * time.Millisecond)
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return 1
		}
		unix.Close(fd)
	}
}

// startServer starts the slow server on the listening socket, from the
// namespace's thread: it lives in the namespace.
func (d *demo) startServer(ln int) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(ln), "listener")
	cmd := exec.Command(self, demoServerArg)
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = d.ns.do(cmd.Start)
	f.Close()
	return cmd, err
}

// demoServerArg runs the demo's server (hidden: not a command for users).
const demoServerArg = "__demo-server"

// clients opens n connections from inside the namespace without waiting
// for them (against a full queue a blocking connect waits for seconds).
func (d *demo) clients(n int) []int {
	var fds []int
	d.ns.do(func() error {
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			unix.Connect(fd, &unix.SockaddrInet4{Port: demoPort, Addr: demoServer})
		}
		return nil
	})
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// steady is normal traffic: perSecond connections, each closed after a
// moment, until ctx ends or d elapses.
func (d *demo) steady(ctx context.Context, perSecond int, dur time.Duration) {
	t := time.NewTicker(time.Second / time.Duration(perSecond))
	defer t.Stop()
	end := time.After(dur)
	var open []int
	defer func() { closeFDs(open) }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-end:
			return
		case <-t.C:
			open = append(open, d.clients(1)...)
			if len(open) > perSecond { // each lives about a second
				closeFDs(open[:1])
				open = open[1:]
			}
		}
	}
}

// flood sends n spoofed SYNs over dur from random 10.98.x.y sources.
func (d *demo) flood(ctx context.Context, n int, dur time.Duration) error {
	raw, err := d.ns.socket(unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return err
	}
	defer unix.Close(raw)
	to := &unix.SockaddrInet4{Addr: demoSink}
	buf := make([]byte, 40)
	gap := dur / time.Duration(n)
	next := time.Now()
	for i := range n {
		if ctx.Err() != nil {
			return nil
		}
		src := [4]byte{10, 98, byte(1 + rand.IntN(254)), byte(1 + rand.IntN(254))}
		if err := unix.Sendto(raw, synPacket(buf, src, uint16(1024+rand.IntN(60000)), rand.Uint32()), 0, to); err != nil {
			return fmt.Errorf("send SYN %d: %w", i, err)
		}
		next = next.Add(gap)
		time.Sleep(time.Until(next))
	}
	return nil
}

// run plays the phases, narrating on w (nil: the live view shows the
// phase instead).
func (d *demo) run(ctx context.Context, w io.Writer) {
	sleep := func(t time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(t):
		}
	}
	d.say(w, "1/4 normal traffic: 5 connections/s to a server that accepts up to 20/s (backlog 8)")
	d.steady(ctx, 5, 6*time.Second)
	d.say(w, "2/4 a burst of 300 clients at once: the accept queue (8) overflows; their SYN retransmits too")
	burst := d.clients(300)
	sleep(6 * time.Second)
	closeFDs(burst)
	sleep(time.Second) // the server drains its queue
	if d.canSYN {
		d.say(w, "3/4 a SYN flood: 3,000 spoofed SYNs in 3 s; the SYN queue fills, the kernel answers with SYN cookies")
		if err := d.flood(ctx, 3000, 3*time.Second); err != nil && w != nil {
			fmt.Fprintf(w, "flood: %v\n", err)
		}
	} else {
		d.say(w, "3/4 (no SYN flood: ip(8) is needed to give its spoofed sources a route)")
	}
	d.say(w, "4/4 normal traffic again")
	d.steady(ctx, 5, 4*time.Second)
}

func demoMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var plain bool
	fs.BoolVar(&plain, "plain", false, "print plain tables even on a terminal")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, demoHelp)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "listenwatch demo: %v (see listenwatch demo -h)\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "listenwatch demo: unexpected argument %q (see listenwatch demo -h)\n", fs.Arg(0))
		return 2
	}
	if err := checkPrivileges(); err != nil {
		fmt.Fprintf(stderr, "listenwatch demo: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runDemo(ctx, plain || !isTerminal(os.Stdin) || !isTerminal(os.Stdout), stdout); err != nil {
		fmt.Fprintf(stderr, "listenwatch demo: %v\n", err)
		return 1
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "listenwatch demo: interrupted; programs detached, namespace removed")
		return 130
	}
	return 0
}

func runDemo(ctx context.Context, plain bool, w io.Writer) error {
	// The tracer first: the server's listen() is then seen, with the
	// backlog it asked for.
	p, err := openInProcess("none")
	if err != nil {
		return err
	}
	defer p.close()
	ns, err := newDemoNS()
	if err != nil {
		return err
	}
	defer ns.close()
	d := &demo{ns: ns, canSYN: ns.sink() == nil}
	ln, err := ns.socket(unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	// The wildcard address: the clients come to 127.0.0.1, the flood to
	// 10.98.0.1.
	if err := unix.Bind(ln, &unix.SockaddrInet4{Port: demoPort}); err != nil {
		unix.Close(ln)
		return err
	}
	if err := unix.Listen(ln, 8); err != nil {
		unix.Close(ln)
		return err
	}
	server, err := d.startServer(ln)
	if err != nil {
		return fmt.Errorf("start the demo's server: %w", err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	fmt.Fprintf(w, "listenwatch demo: a slow server (pid %d) on port %d (backlog 8) in a throwaway network namespace (net:[%d]); the tracer runs in this process\n",
		server.Process.Pid, demoPort, ns.inode)
	doctor := diagnose.New(p.tracer, procfs.FS{}, time.Hour, zerolog.Nop())
	doctor.Step() // the baseline

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	first, err := p.snapshot()
	if err != nil {
		return err
	}
	inDemo := func(s views.Snapshot) views.Snapshot { // only the demo's listener
		var ls []views.Listener
		for _, l := range s.Listeners {
			if uint64(l.Netns) == ns.inode {
				ls = append(ls, l)
			}
		}
		s.Listeners = ls
		return s
	}
	if plain {
		done := make(chan struct{})
		go func() { defer close(done); d.run(ctx, w) }()
		prev := inDemo(first)
		t := time.NewTicker(3 * time.Second)
		defer t.Stop()
	loop:
		for {
			select {
			case <-done:
				break loop
			case <-t.C:
				cur, err := p.snapshot()
				if err != nil {
					return err
				}
				cur = inDemo(cur)
				fmt.Fprintf(w, "-- top, last %.0fs (%s)\n", cur.Time.Sub(prev.Time).Seconds(), views.StagesLine(cur.Stages))
				views.WriteTable(w, views.Rates(prev, cur))
				prev = cur
			}
		}
	} else {
		src := &filteredSource{p, inDemo}
		m := newTopModel(src, inDemo(first), time.Second)
		m.banner = func() string { return "DEMO " + *d.phase.Load() + "  (q: end the demo)" }
		d.say(nil, "starting")
		prog := tea.NewProgram(m, tea.WithAltScreen(), tea.WithOutput(w))
		go func() { d.run(ctx, nil); prog.Quit() }()
		if _, err := prog.Run(); err != nil {
			return err
		}
		cancel() // q pressed: the phases stop
	}
	findings := doctor.Step()
	fmt.Fprintln(w, "\n== what listenwatch diagnosed over the demo (the agent logs these and serves them at /diagnosis):")
	if len(findings) == 0 {
		fmt.Fprintln(w, "nothing (ended before anything was refused)")
	}
	for _, f := range findings {
		fmt.Fprintf(w, "- %s\n", f.Message)
	}
	fmt.Fprintln(w, "\nOn a real host: listenwatch top, listenwatch trace --drops-only, listenwatch doctor; make run for the exporter.")
	return nil
}

// filteredSource shows the live view only the demo's listener.
type filteredSource struct {
	p      *inProcess
	filter func(views.Snapshot) views.Snapshot
}

func (f *filteredSource) snapshot() (views.Snapshot, error) {
	s, err := f.p.snapshot()
	return f.filter(s), err
}
func (f *filteredSource) source() string { return f.p.source() }
func (f *filteredSource) close()         {}
