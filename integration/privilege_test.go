package integration

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"github.com/listenwatch/listenwatch/loader"
)

// setprivArgs runs a command with exactly caps (bounding, inheritable and
// ambient sets), as uid 0: what the DaemonSet's securityContext grants.
func setprivArgs(caps []loader.Capability) []string {
	var set []string
	for _, c := range caps {
		set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c.Name, "CAP_")))
	}
	list := strings.Join(append([]string{"-all"}, set...), ",")
	return []string{"--inh-caps=" + list, "--ambient-caps=" + list, "--bounding-set=" + list, "--"}
}

func without(caps []loader.Capability, name string) []loader.Capability {
	var out []loader.Capability
	for _, c := range caps {
		if c.Name != name {
			out = append(out, c)
		}
	}
	return out
}

// nobodyListener starts podapp as uid/gid 65534 inside ns, listening with
// backlog 4 and never accepting: an owner the agent can only see with the
// right capabilities. It returns podapp's pid.
func nobodyListener(t *testing.T, ns *netnstest.NS, addr netip.AddrPort) int {
	t.Helper()
	dir, err := os.MkdirTemp("", "lwpriv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // nobody must be able to run the binary
	bin := podappBinary(t, dir)
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
		bin, addr.String(), "4")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	// ip and setpriv exec into podapp: the pid is podapp's once it listens.
	eventually(t, settle, func() (bool, string) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		return strings.TrimSpace(string(b)) == "podapp", "podapp not started"
	})
	eventually(t, settle, func() (bool, string) {
		c, _, err := dial(ns, addr)
		if err == nil {
			c.Close()
		}
		return err == nil, fmt.Sprintf("podapp not listening: %v", err)
	})
	return cmd.Process.Pid
}

// TestLeastPrivilege proves the DaemonSet's capability set
// (loader.Capabilities, which deploy/ must grant exactly): with it the
// agent attaches every stage, sees a listener that existed before it, owned
// by another user in another namespace, with its fd count, reads that
// namespace's sysctls for the diagnosis, and counts its overflow exactly.
// Without any one of them it refuses to start, in one line naming it; and
// forced to run anyway, it loses what that capability is for.
func TestLeastPrivilege(t *testing.T) {
	need(t, events.StageSYN)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	needGo(t)
	bin := buildAgent(t)
	ns := newNS(t)
	addr := netip.MustParseAddrPort("127.0.0.1:8484")
	pid := nobodyListener(t, ns, addr)
	infoLine := fmt.Sprintf(`comm="podapp",container="",namespace="",netns="%d",pid="%d"`, ns.Inode, pid)
	fdsLine := fmt.Sprintf(`listenwatch_process_open_fds{comm="podapp",pid="%d"}`, pid)
	scrape := func(a string) string {
		body, _ := get("http://" + a + "/metrics")
		return body
	}

	t.Run("exact set", func(t *testing.T) {
		a := startAgentAs(t, setprivArgs(loader.Capabilities), nil, bin, "--diagnosis-interval", "2s")
		eventually(t, settle, func() (bool, string) {
			body := scrape(a)
			return strings.Contains(body, infoLine) && strings.Contains(body, fdsLine),
				fmt.Sprintf("no listener_info {%s} or %s in the scrape", infoLine, fdsLine)
		})
		if body := scrape(a); strings.Contains(body, `mode="none"`) {
			t.Errorf("a stage is not attached with the exact set:\n%s", grepLines(body, "listenwatch_hook_info"))
		}
		lo := overflowScraped(t, ns, addr, addr, "http://"+a+"/metrics")
		eventually(t, settle, func() (bool, string) {
			d, _ := get("http://" + a + "/diagnosis")
			return strings.Contains(d, "8484") && strings.Contains(d, "net.core.somaxconn"),
				fmt.Sprintf("the diagnosis does not read the namespace's somaxconn: %q", d)
		})
		t.Logf("with %s only: every stage attached, %d overflows as the kernel counted, owner pid %d (uid 65534) with its fds",
			strings.Join(capNames(loader.Capabilities), ", "), lo, pid)
	})

	for _, c := range loader.Capabilities {
		t.Run("without "+c.Name, func(t *testing.T) {
			caps := without(loader.Capabilities, c.Name)
			out, err := exec.Command("setpriv", append(setprivArgs(caps), bin, "run", "--web.listen-address", "127.0.0.1:0", "--cri-endpoint", "none")...).CombinedOutput()
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if err == nil || len(lines) != 1 || !strings.Contains(lines[0], c.Name) {
				t.Errorf("without %s: exit %v, output %q: want a non-zero exit and one line naming it", c.Name, err, out)
			}
			// Forced to run, the agent loses what the capability is for.
			if c.Name == "CAP_SYS_ADMIN" {
				// Not even with the BPF-specific capabilities in its place:
				// they load programs, but cannot enter namespaces.
				caps = append(caps, loader.Capability{Bit: 39, Name: "CAP_BPF"}, loader.Capability{Bit: 38, Name: "CAP_PERFMON"})
			}
			a := startAgentAs(t, setprivArgs(caps), []string{"LISTENWATCH_SKIP_PRIVILEGE_CHECK=1"}, bin)
			time.Sleep(3 * time.Second) // seeding and attach are done before /healthz answers; one scrape interval more
			body := scrape(a)
			switch c.Name {
			case "CAP_SYS_ADMIN": // CAP_BPF+CAP_PERFMON, no setns: the listener that predates the agent is not found
				if strings.Contains(body, infoLine) {
					t.Errorf("without CAP_SYS_ADMIN the pre-existing listener was still found")
				}
			case "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH": // another user's /proc/<pid>/fd is closed
				if strings.Contains(body, fdsLine) || strings.Contains(body, infoLine) {
					t.Errorf("without %s the owner's fds were still read", c.Name)
				}
			case "CAP_SYSLOG": // no kallsyms: no SYN hook in tracepoint mode
				if modeOf(events.StageSYN) != events.ModeTracepoint {
					t.Logf("the SYN stage runs in %s mode here: it needs no kallsyms", modeOf(events.StageSYN))
				} else if !strings.Contains(body, `listenwatch_hook_info{mode="none",stage="syn"}`) {
					t.Errorf("without CAP_SYSLOG the SYN stage still attached in tracepoint mode")
				}
			default:
				t.Errorf("no experiment for %s: say what it is needed for", c.Name)
			}
		})
	}
}

// startAgentAs is startAgent under setpriv with extra environment.
func startAgentAs(t *testing.T, setpriv, env []string, bin string, args ...string) string {
	t.Helper()
	return startAgentCmd(t, env, append(append([]string{"setpriv"}, setpriv...), bin), args...)
}

func capNames(cs []loader.Capability) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// sumLines adds the values of the sample lines that start with prefix and
// contain sub.
func sumLines(body, prefix, sub string) float64 {
	var sum float64
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, sub) {
			var v float64
			if i := strings.LastIndexByte(l, ' '); i > 0 {
				fmt.Sscan(l[i+1:], &v)
			}
			sum += v
		}
	}
	return sum
}

// overflowScraped sends 40 clients at a listener that never accepts (its
// address as dialled inside ns, its labels as exported) and waits until
// the accept-queue-full drops a scrape of metricsURL reports equal the
// namespace's ListenOverflows delta; it returns that count.
func overflowScraped(t *testing.T, ns *netnstest.NS, dialAddr netip.AddrPort, listenAddr netip.AddrPort, metricsURL string) uint64 {
	t.Helper()
	before, err := ns.Netstat()
	if err != nil {
		t.Fatal(err)
	}
	closeAll(connectNonBlocking(t, ns, dialAddr, 40))
	prefix := fmt.Sprintf(`listenwatch_listener_drops_total{addr="%s",netns="%d",port="%d"`, listenAddr.Addr(), ns.Inode, listenAddr.Port())
	var lo uint64
	eventually(t, settle, func() (bool, string) {
		after, err := ns.Netstat()
		if err != nil {
			t.Fatal(err)
		}
		lo = after["TcpExt.ListenOverflows"] - before["TcpExt.ListenOverflows"]
		body, _ := get(metricsURL)
		got := sumLines(body, prefix, "accept_queue_full")
		return lo > 0 && got == float64(lo), fmt.Sprintf("overflows: agent %v, kernel %d", got, lo)
	})
	return lo
}
