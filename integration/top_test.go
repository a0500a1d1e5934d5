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
)

// TestTopOnce: `top --once -o json` from the agent's API and from an
// in-process tracer, while a listener overflows inside its window: the
// listener is the first row, and its drops over the window equal the
// namespace's ListenOverflows delta, exactly.
func TestTopOnce(t *testing.T) {
	need(t, events.StageSYN)
	bin := buildAgent(t)
	agent := startAgent(t, bin)
	for _, src := range []string{"http://" + agent, "none"} {
		t.Run("agent="+src, func(t *testing.T) {
			ns := newNS(t)
			addr := netip.MustParseAddrPort("127.0.0.1:8787")
			listen(t, ns, addr, 4)
			// The agent registers the listener from its listen() call: wait
			// for it to be seen before the window opens.
			eventually(t, settle, func() (bool, string) {
				body, _ := get("http://" + agent + "/api/v1/listeners")
				return strings.Contains(body, fmt.Sprintf(`"netns":%d`, ns.Inode)), "the agent does not list the listener yet"
			})
			cmd := exec.Command(bin, "top", "--once", "-o", "json", "--interval", "4s", "--agent", src, "--cri-endpoint", "none")
			var out strings.Builder
			cmd.Stdout = &out
			stderr, _ := cmd.StderrPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(stderr)
			begun := false
			for sc.Scan() {
				if strings.Contains(sc.Text(), "window of 4s begun") {
					begun = true
					break
				}
				t.Log(sc.Text())
			}
			if !begun {
				cmd.Wait()
				t.Fatal("top did not start its window")
			}
			before, err := ns.Netstat()
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			burst(t, ns, addr, 60)
			after, err := ns.Netstat()
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 3*time.Second {
				t.Skipf("the overflow took %v: it may not fit in top's 4 s window on a machine this loaded", time.Since(start))
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("top: %v", err)
			}
			lo := after["TcpExt.ListenOverflows"] - before["TcpExt.ListenOverflows"]
			if lo == 0 {
				t.Fatal("kernel counted no overflow: the scenario is broken")
			}
			var rep struct {
				Source        string  `json:"source"`
				WindowSeconds float64 `json:"window_seconds"`
				Rows          []struct {
					Netns          uint32             `json:"netns"`
					Port           uint16             `json:"port"`
					DropsTotal     uint64             `json:"drops_total"`
					DropsPerSecond map[string]float64 `json:"drops_per_second"`
					AcceptQueue    uint32             `json:"accept_queue"`
					Backlog        uint32             `json:"backlog"`
				} `json:"rows"`
			}
			if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
				t.Fatalf("top -o json: %v\n%s", err, out.String())
			}
			if len(rep.Rows) == 0 || rep.Rows[0].Netns != ns.Inode || rep.Rows[0].Port != addr.Port() {
				t.Fatalf("the overflowing listener is not the first row: %+v", rep.Rows)
			}
			r := rep.Rows[0]
			var perSecond float64
			for _, v := range r.DropsPerSecond {
				perSecond += v
			}
			if r.DropsTotal != lo {
				t.Errorf("top: %d drops in the window, kernel ListenOverflows %d", r.DropsTotal, lo)
			}
			if d := perSecond*rep.WindowSeconds - float64(lo); d > 1e-6 || d < -1e-6 {
				t.Errorf("top: %.3f drops/s over %.3f s is not the %d drops", perSecond, rep.WindowSeconds, lo)
			}
			if r.Backlog != 4 || r.AcceptQueue != 5 {
				t.Errorf("queue %d/%d, want 5/4 (a full queue of backlog 4 holds 5)", r.AcceptQueue, r.Backlog)
			}
			t.Logf("%s: %d drops in %.2f s (%.1f/s), as the kernel counted", rep.Source, lo, rep.WindowSeconds, perSecond)
		})
	}
}
