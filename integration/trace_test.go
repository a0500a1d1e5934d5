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

// startTrace starts `listenwatch trace -o json` and returns once its
// session is open (its stderr says so).
func startTrace(t *testing.T, bin string, args ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"trace", "-o", "json"}, args...)...)
	out := &strings.Builder{}
	cmd.Stdout = out
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		t.Log(sc.Text())
		if strings.Contains(sc.Text(), "Ctrl-C to stop") {
			go func() { // keep draining: a full pipe would block it
				for sc.Scan() {
				}
			}()
			return cmd, out
		}
	}
	cmd.Wait()
	t.Fatal("trace did not start")
	return nil, nil
}

func traceEvents(t *testing.T, out string) []stream.Event {
	t.Helper()
	var evs []stream.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e stream.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

// TestTrace: `trace -o json`, from the agent's /api/v1/events and from an
// in-process tracer, while one listener overflows and another accepts
// slowly. Two readers at once: with --drops-only, the drop lines' counts
// plus the suppressed lines' counts equal the namespace's ListenOverflows,
// exactly, with the kernel's rate limit visible (suppressed > 0, drop
// lines per second bounded), and no other line; without it, the same,
// and exactly one line per accepted connection of the test's clients,
// whose accept-queue wait lies within what the test measured itself.
func TestTrace(t *testing.T) {
	need(t, events.StageSYN, events.StageHandshake, events.StageAccept)
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
			common := []string{"--netns", fmt.Sprint(ns.Inode), "--duration", "8s", "--agent", src, "--cri-endpoint", "none"}
			dropsCmd, dropsOut := startTrace(t, bin, append(common, "--drops-only")...)
			allCmd, allOut := startTrace(t, bin, common...)
			start := time.Now()
			before, err := ns.Netstat()
			if err != nil {
				t.Fatal(err)
			}
			// A slow acceptor: each client waits 30 ms in the accept queue,
			// timed by the test on the kernel's clock.
			type bounds struct{ minWait, maxWait time.Duration }
			clients := map[uint16]bounds{}
			for range 5 {
				c, begun, _, err := dialTimed(ns, served)
				if err != nil {
					t.Fatal(err)
				}
				eventually(t, settle, func() (bool, string) {
					return acceptQueueLen(t, sfd) == 1, "the handshake is not complete on the server"
				})
				queued := mono()
				time.Sleep(30 * time.Millisecond)
				acceptStart := mono()
				_, _, nfd, err := acceptOne(sfd)
				acceptDone := mono()
				if err != nil {
					t.Fatal(err)
				}
				unix.Close(nfd)
				clients[clientAddr(c).Port()] = bounds{acceptStart - queued, acceptDone - begun}
				c.Close()
			}
			burst(t, ns, full, 200)
			after, err := ns.Netstat()
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 6*time.Second {
				t.Skipf("the scenario took %v: it may not fit in trace's 8 s on a machine this loaded", time.Since(start))
			}
			if err := dropsCmd.Wait(); err != nil {
				t.Fatalf("trace --drops-only: %v", err)
			}
			if err := allCmd.Wait(); err != nil {
				t.Fatalf("trace: %v", err)
			}
			lo := after["TcpExt.ListenOverflows"] - before["TcpExt.ListenOverflows"]
			if lo == 0 {
				t.Fatal("kernel counted no overflow: the scenario is broken")
			}
			for _, reader := range []struct {
				name string
				out  string
			}{{"--drops-only", dropsOut.String()}, {"all", allOut.String()}} {
				var dropped, suppressed, dropLines uint64
				perSecond := map[int64]int{}
				seen := map[uint16]bool{}
				for _, e := range traceEvents(t, reader.out) {
					if e.Netns != ns.Inode && e.Type != stream.TypeLost {
						t.Errorf("%s: --netns %d let through %+v", reader.name, ns.Inode, e)
					}
					switch e.Type {
					case stream.TypeDrop:
						if e.Listener != full.String() || !strings.HasPrefix(e.Reason, "accept_queue_full") {
							t.Errorf("%s: drop line %+v", reader.name, e)
						}
						if e.Client != "" && !strings.HasPrefix(e.Client, "127.0.0.1:") {
							t.Errorf("%s: drop line names client %q", reader.name, e.Client)
						}
						dropped += e.Count
						dropLines++
						perSecond[e.Time.Unix()]++
					case stream.TypeSuppressed:
						suppressed += e.Count
					case stream.TypeAccept:
						if reader.name == "--drops-only" {
							t.Errorf("--drops-only let through %+v", e)
							continue
						}
						p := netip.MustParseAddrPort(e.Client).Port()
						b, ok := clients[p]
						if e.Listener != served.String() || !ok || seen[p] {
							t.Errorf("accept line %+v: not one of the test's, or a second one", e)
							continue
						}
						seen[p] = true
						if e.QueueWaitSeconds == nil {
							t.Errorf("accept line without its accept-queue wait: %+v", e)
							continue
						}
						if w := time.Duration(*e.QueueWaitSeconds * 1e9); w < b.minWait-time.Microsecond || w > b.maxWait+time.Microsecond {
							t.Errorf("client :%d waited %v in the accept queue, the test measured [%v, %v]", p, w, b.minWait, b.maxWait)
						}
					case stream.TypeLost:
						t.Errorf("%s: lost %d events with nobody slow", reader.name, e.Count)
					}
				}
				t.Logf("%s %s: kernel ListenOverflows %d; trace: %d drops in %d lines + %d suppressed; lines per second %v",
					src, reader.name, lo, dropped, dropLines, suppressed, perSecond)
				if dropped+suppressed != lo {
					t.Errorf("%s: %d dropped + %d suppressed = %d, kernel ListenOverflows %d", reader.name, dropped, suppressed, dropped+suppressed, lo)
				}
				if suppressed == 0 {
					t.Errorf("%s: %d overflows in 1.5 s and nothing over the rate limit of %d/s", reader.name, lo, events.DropRecordsPerSecond)
				}
				for sec, n := range perSecond {
					// The kernel's window is its own second, not the wall's:
					// a wall second may hold parts of two.
					if n > 2*events.DropRecordsPerSecond+8 {
						t.Errorf("%s: %d drop lines in the second %d: the rate limit did not hold", reader.name, n, sec)
					}
				}
				if reader.name == "all" && len(seen) != len(clients) {
					t.Errorf("accept lines for %d of the %d connections the test made", len(seen), len(clients))
				}
			}
		})
	}
}

// TestTraceUsage: bad flags get one line and exit 2; an agent that does
// not answer one line and exit 1.
func TestTraceUsage(t *testing.T) {
	bin := buildAgent(t)
	for _, args := range [][]string{{"--port", "70000"}, {"--addr", "nope"}, {"-o", "yaml"}, {"--bogus"}, {"extra"}} {
		out, err := exec.Command(bin, append([]string{"trace"}, args...)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("trace %v: %v, output %q; want exit 2 and one line", args, err, out)
		}
	}
	// An agent that does not answer: one line, exit 1, for each command
	// that reads one.
	for _, cmd := range [][]string{{"trace"}, {"top", "--once"}} {
		out, err := exec.Command(bin, append(cmd, "--agent", "http://127.0.0.1:1")...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 ||
			!strings.Contains(string(out), "127.0.0.1:1") {
			t.Errorf("%v --agent http://127.0.0.1:1: %v, output %q; want exit 1 and one line naming it", cmd, err, out)
		}
	}
}
