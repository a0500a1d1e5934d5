package integration

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"golang.org/x/sys/unix"
)

// tmuxPane is a real terminal of 120x40 run by tmux, with a shell in it.
type tmuxPane struct {
	t      *testing.T
	socket string
}

func newPane(t *testing.T) *tmuxPane {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux missing: run scripts/install-deps.sh")
	}
	p := &tmuxPane{t: t, socket: fmt.Sprintf("lwtest%d", time.Now().UnixNano())}
	if out, err := p.tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "40", "sh"); err != nil {
		t.Fatalf("tmux: %v: %s", err, out)
	}
	t.Cleanup(func() { p.tmux("kill-server") })
	return p
}

func (p *tmuxPane) tmux(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-L", p.socket}, args...)...).CombinedOutput()
	return string(out), err
}

func (p *tmuxPane) keys(keys ...string) {
	p.t.Helper()
	if out, err := p.tmux(append([]string{"send-keys", "-t", "top"}, keys...)...); err != nil {
		p.t.Fatalf("send-keys %v: %v: %s", keys, err, out)
	}
}

func (p *tmuxPane) screen() string {
	out, _ := p.tmux("capture-pane", "-p", "-t", "top")
	return out
}

// waitFor waits until the screen satisfies cond.
func (p *tmuxPane) waitFor(what string, cond func(screen string) bool) string {
	p.t.Helper()
	var s string
	eventually(p.t, settle, func() (bool, string) {
		s = p.screen()
		return cond(s), what + "; screen:\n" + s
	})
	return s
}

// rowsOf are the table rows of the live view (after the column header).
func rowsOf(screen string) []string {
	lines := strings.Split(screen, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "LISTENER") {
			var rows []string
			for _, r := range lines[i+1:] {
				if strings.Contains(r, " listeners | ") || strings.Contains(r, "first window") {
					break
				}
				rows = append(rows, r)
			}
			return rows
		}
	}
	return nil
}

// TestTopLive drives the live view in a real 120x40 terminal (tmux): a
// listener overflowing without pause is the first row, with its drops;
// the header says the source, the stages' modes and that nothing was
// lost; / filters, the arrows change the sort column, p pauses; q and
// Ctrl-C leave the terminal as it was (canonical mode, main screen).
func TestTopLive(t *testing.T) {
	need(t, events.StageSYN, events.StageAccept)
	bin := buildAgent(t)
	agent := startAgent(t, bin)
	ns := newNS(t)
	full := netip.MustParseAddrPort("127.0.0.1:8790")
	served := netip.MustParseAddrPort("127.0.0.1:8791")
	listen(t, ns, full, 4)
	sfd := listen(t, ns, served, 64)

	// Traffic until the test ends: overflows on one listener, accepted
	// connections on the other.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			fds := connectNonBlocking(t, ns, full, 20)
			select {
			case <-stop:
				closeAll(fds)
				return
			case <-time.After(300 * time.Millisecond):
			}
			closeAll(fds)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			c, _, err := dial(ns, served)
			if err != nil {
				continue
			}
			if _, _, nfd, err := acceptOne(sfd); err == nil {
				unix.Close(nfd)
			}
			c.Close()
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	for _, quit := range []string{"q", "C-c"} {
		t.Run("quit="+quit, func(t *testing.T) {
			p := newPane(t)
			p.keys(fmt.Sprintf("%s top --agent http://%s --interval 1s; echo EXITED $?; stty -a | grep -o -- '-*icanon'", bin, agent), "Enter")
			// LISTENER OWNER ACC/s P50 P99 QUEUE AQ/s ...: the first row is
			// the overflowing listener, full (5/4), dropping (AQ/s > 0).
			s := p.waitFor("the overflowing listener is the first row, full and dropping", func(s string) bool {
				rows := rowsOf(s)
				if len(rows) == 0 {
					return false
				}
				f := strings.Fields(rows[0])
				return strings.HasPrefix(rows[0], full.String()) && len(f) > 6 && f[5] == "5/4" && f[6] != "0"
			})
			header := strings.SplitN(s, "\n", 3)
			if !strings.Contains(header[0], "agent http://"+agent) || !strings.Contains(header[0], "no events lost") ||
				!strings.HasPrefix(header[1], "stages ") || !strings.Contains(header[1], "syn") {
				t.Errorf("header:\n%s\n%s", header[0], header[1])
			}
			for _, l := range strings.Split(s, "\n") {
				if len([]rune(l)) > 120 {
					t.Errorf("line wider than the terminal: %q", l)
				}
			}

			// Filter: only the accepting listener.
			p.keys("/", "8791", "Enter")
			p.waitFor("the filter keeps only :8791", func(s string) bool {
				rows := rowsOf(s)
				return strings.Contains(s, "filter: 8791") && len(rows) == 1 && strings.HasPrefix(rows[0], served.String())
			})
			p.keys("Escape")
			p.waitFor("Esc clears the filter", func(s string) bool { return strings.Contains(s, "filter: none") })

			// Sort by accepted/s: three steps right (LISTENER, OWNER, ACC/s).
			p.keys("Right", "Right", "Right")
			p.waitFor("sorted by ACCEPT/s, the accepting listener first", func(s string) bool {
				rows := rowsOf(s)
				return strings.Contains(s, "sort: ACCEPT/s") && strings.Contains(s, "ACC/s▼") &&
					len(rows) > 0 && strings.HasPrefix(rows[0], served.String())
			})

			p.keys("p")
			paused := p.waitFor("PAUSED", func(s string) bool { return strings.Contains(s, "PAUSED") })
			time.Sleep(2500 * time.Millisecond) // two intervals: nothing may change
			if now := p.screen(); rowsOf(now)[0] != rowsOf(paused)[0] {
				t.Errorf("paused view changed:\n%s\nthen\n%s", paused, now)
			}

			p.keys(quit)
			// What the shell printed after top: lines of their own (the
			// command line holds the same words).
			after := func(s string) map[string]bool {
				m := map[string]bool{}
				for _, l := range strings.Split(s, "\n") {
					// The shell's prompt may share the line, when the main
					// screen comes back with the cursor after it.
					m[strings.TrimSpace(strings.TrimPrefix(l, "# "))] = true
				}
				return m
			}
			s = p.waitFor("top exits, the shell runs stty", func(s string) bool {
				a := after(s)
				return a["icanon"] || a["-icanon"]
			})
			a := after(s)
			if !a["EXITED 0"] {
				t.Errorf("exit status not 0:\n%s", s)
			}
			// Back on the main screen (no table left), in canonical mode.
			if a["-icanon"] || strings.Contains(s, "LISTENER") {
				t.Errorf("terminal not restored:\n%s", s)
			}
		})
	}
}
