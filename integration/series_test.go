package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
)

// startAgent builds and runs the listenwatch binary with args, returns its
// metrics address and stops it when the test ends.
func startAgent(t *testing.T, bin string, args ...string) string {
	t.Helper()
	return startAgentCmd(t, nil, []string{bin}, args...)
}

// startAgentCmd runs argv (the binary, or a wrapper and the binary) with
// extra environment.
func startAgentCmd(t *testing.T, env, argv []string, args ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(argv[0], append(append(argv[1:], "run", "--web.listen-address", addr, "--cri-endpoint", "none", "--log-format", "json"), args...)...)
	cmd.Env = append(os.Environ(), env...)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("agent exited with %v on SIGTERM: %s", err, logs.String())
			}
		case <-time.After(settle):
			cmd.Process.Kill()
			t.Errorf("agent did not stop on SIGTERM")
		}
	})
	eventually(t, settle, func() (bool, string) {
		select {
		case err := <-exited:
			t.Fatalf("agent exited: %v: %s", err, logs.String())
		default:
		}
		_, err := get("http://" + addr + "/healthz")
		return err == nil, fmt.Sprintf("agent not serving: %v", err)
	})
	return addr
}

func buildAgent(t *testing.T) string {
	t.Helper()
	needGo(t)
	bin := filepath.Join(t.TempDir(), "listenwatch")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/listenwatch").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	return bin
}

// seriesFor counts the sample lines of a /metrics scrape that belong to
// one listener (its netns, addr and port labels), histogram buckets,
// _sum and _count included: what Prometheus stores for it.
func seriesFor(body string, netns uint32, addr netip.AddrPort) int {
	want := []string{fmt.Sprintf(`netns="%d"`, netns), fmt.Sprintf(`addr="%s"`, addr.Addr()), fmt.Sprintf(`port="%d"`, addr.Port())}
	n := 0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			n++
		}
	}
	return n
}

// TestSeriesPerListener scrapes the real agent, with its defaults and with
// every optional family, after a listener has accepted connections and
// overflowed: the default must fit the budget of 40 series per listener.
func TestSeriesPerListener(t *testing.T) {
	need(t, events.StageSYN)
	bin := buildAgent(t)
	def := startAgent(t, bin)
	all := startAgent(t, bin, "--metrics.latency-split", "--metrics.queue-length-histogram")

	ns := newNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:8282")
	fd := listen(t, ns, addr, 4)
	connectN(t, ns, addr, 3) // queued, then accepted below
	for range 3 {
		_, _, nfd, err := acceptOne(fd)
		if err != nil {
			t.Fatal(err)
		}
		syscall.Close(nfd)
	}
	closeAll(connectNonBlocking(t, ns, addr, 20)) // an overflow: drop series carry values

	counts := map[string]int{}
	for name, a := range map[string]string{"default": def, "all families": all} {
		eventually(t, settle, func() (bool, string) {
			body, err := get("http://" + a + "/metrics")
			if err != nil {
				return false, err.Error()
			}
			counts[name] = seriesFor(body, ns.Inode, addr)
			return strings.Contains(body, fmt.Sprintf(`listenwatch_syn_to_accept_seconds_count{addr="%s",netns="%d",port="%d"} 3`, addr.Addr(), ns.Inode, addr.Port())),
				fmt.Sprintf("%s: the listener's 3 connections are not in the scrape yet", name)
		})
	}
	t.Logf("series per listener from a real scrape: default %d, every optional family %d (108 before the series budget); a node with 200 listeners: %d by default",
		counts["default"], counts["all families"], 200*counts["default"])
	if counts["default"] > 40 {
		t.Errorf("default: %d series per listener, budget 40", counts["default"])
	}
	if counts["all families"] <= counts["default"] {
		t.Errorf("optional families added no series: %d vs %d", counts["all families"], counts["default"])
	}
}

// needGo skips a test that builds a binary where there is no Go toolchain
// (the kernel-matrix guests run a prebuilt test binary only).
func needGo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the Go toolchain to build a binary (not in kernel-matrix guests)")
	}
}
