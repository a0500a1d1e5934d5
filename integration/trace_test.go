package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/stream"
	"golang.org/x/sys/unix"
)

// TestTrace: `trace -o json`, from the agent's /api/v1/events and from an
// in-process tracer, while one listener overflows and another accepts:
// the drop lines' counts plus the suppressed lines' counts equal the
// namespace's ListenOverflows, exactly, with the kernel's rate limit
// visible (suppressed > 0, drop lines per second bounded); every accepted
// connection the test made has its line, with its client port and
// latencies.
func TestTrace(t *testing.T) {
	need(t, events.StageSYN, events.StageAccept)
	bin := buildAgent(t)
	agent := startAgent(t, bin)
	for _, src := range []string{"http://" + agent, "none"} {
		t.Run("agent="+src, func(t *testing.T) {
			ns := newNS(t)
			full := netip.MustParseAddrPort("127.0.0.1:8788")
			served := netip.MustParseAddrPort("127.0.0.1:8789")
			listen(t, ns, full, 4)
			sfd := listen(t, ns, served, 16)
			eventually(t, settle, func() (bool, string) {
				body, _ := get("http://" + agent + "/api/v1/listeners")
				return strings.Count(body, fmt.Sprintf(`"netns":%d`, ns.Inode)) == 2, "the agent does not list both listeners yet"
			})
			cmd := exec.Command(bin, "trace", "-o", "json", "--netns", fmt.Sprint(ns.Inode), "--duration", "7s",
				"--agent", src, "--cri-endpoint", "none")
			var out strings.Builder
			cmd.Stdout = &out
			stderr, _ := cmd.StderrPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(stderr)
			begun := false
			for sc.Scan() {
				t.Log(sc.Text())
				if strings.Contains(sc.Text(), "Ctrl-C to stop") {
					begun = true
					break
				}
			}
			if !begun {
				cmd.Wait()
				t.Fatal("trace did not start")
			}
			start := time.Now()
			before, err := ns.Netstat()
			if err != nil {
				t.Fatal(err)
			}
			// Accepted connections, each known by its client port.
			clients := map[uint16]bool{}
			for range 5 {
				c, _, err := dial(ns, served)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, nfd, err := acceptOne(sfd); err != nil {
					t.Fatal(err)
				} else {
					unix.Close(nfd)
				}
				clients[clientAddr(c).Port()] = true
				c.Close()
			}
			fds := connectNonBlocking(t, ns, full, 200)
			time.Sleep(1500 * time.Millisecond) // the 1 s SYN retransmits are refused too
			closeAll(fds)
			after, err := ns.Netstat()
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 5*time.Second {
				t.Skipf("the scenario took %v: it may not fit in trace's 7 s on a machine this loaded", time.Since(start))
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("trace: %v", err)
			}
			lo := after["TcpExt.ListenOverflows"] - before["TcpExt.ListenOverflows"]
			if lo == 0 {
				t.Fatal("kernel counted no overflow: the scenario is broken")
			}
			var dropped, suppressed, dropLines uint64
			perSecond := map[int64]int{}
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var e stream.Event
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("not JSON: %q: %v", line, err)
				}
				if e.Netns != ns.Inode && e.Type != stream.TypeLost {
					t.Errorf("--netns %d let through %+v", ns.Inode, e)
				}
				switch e.Type {
				case stream.TypeDrop:
					if e.Listener != full.String() || !strings.HasPrefix(e.Reason, "accept_queue_full") {
						t.Errorf("drop line %+v", e)
					}
					if e.Client != "" && !strings.HasPrefix(e.Client, "127.0.0.1:") {
						t.Errorf("drop line names client %q", e.Client)
					}
					dropped += e.Count
					dropLines++
					perSecond[e.Time.Unix()]++
				case stream.TypeSuppressed:
					suppressed += e.Count
				case stream.TypeAccept:
					p := netip.MustParseAddrPort(e.Client).Port()
					if e.Listener != served.String() || !clients[p] {
						t.Errorf("accept line %+v: not one of the test's", e)
						continue
					}
					if e.QueueWaitSeconds == nil || e.SYNToAcceptSeconds == nil && modeOf(events.StageSYN) != events.ModeNone && has(events.StageHandshake) {
						t.Errorf("accept line without latencies: %+v", e)
					}
					delete(clients, p)
				case stream.TypeLost:
					t.Errorf("trace lost %d events with nobody slow", e.Count)
				}
			}
			t.Logf("%s: kernel ListenOverflows %d; trace: %d drops in %d lines + %d suppressed; lines per second %v",
				src, lo, dropped, dropLines, suppressed, perSecond)
			if dropped+suppressed != lo {
				t.Errorf("trace: %d dropped + %d suppressed = %d, kernel ListenOverflows %d", dropped, suppressed, dropped+suppressed, lo)
			}
			if suppressed == 0 {
				t.Errorf("%d overflows in 1.5 s and nothing over the rate limit of %d/s", lo, events.DropRecordsPerSecond)
			}
			for sec, n := range perSecond {
				// The kernel's window is its own second, not the wall's:
				// a wall second may hold parts of two.
				if n > 2*events.DropRecordsPerSecond+8 {
					t.Errorf("%d drop lines in the second %d: the rate limit did not hold", n, sec)
				}
			}
			if len(clients) > 0 {
				t.Errorf("accepted connections without a line: client ports %v", clients)
			}
		})
	}
}

// TestTraceUsage: bad flags get one line and exit 2.
func TestTraceUsage(t *testing.T) {
	bin := buildAgent(t)
	for _, args := range [][]string{{"--port", "70000"}, {"--addr", "nope"}, {"-o", "yaml"}, {"--bogus"}, {"extra"}} {
		out, err := exec.Command(bin, append([]string{"trace"}, args...)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("trace %v: %v, output %q; want exit 2 and one line", args, err, out)
		}
	}
}
