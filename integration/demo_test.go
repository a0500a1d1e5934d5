package integration

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/events"
)

// listenwatchPrograms counts the BPF programs loaded on the host whose
// names are listenwatch's (lw_*).
func listenwatchPrograms(t *testing.T) int {
	t.Helper()
	n := 0
	id := ebpf.ProgramID(0)
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "lw_") {
			n++
		}
		p.Close()
	}
}

// netnsExists says whether a network namespace is still held by a
// process (any thread) or a bind mount.
func netnsExists(inode uint64) bool {
	paths, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/net")
	more, _ := filepath.Glob("/run/netns/*")
	for _, p := range append(paths, more...) {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) == nil && st.Ino == inode {
			return true
		}
	}
	return false
}

var demoNetns = regexp.MustCompile(`net:\[(\d+)\]`)

// TestDemo runs `listenwatch demo` as a newcomer would (not on a
// terminal: plain tables), to its end and stopped early by Ctrl-C and by
// kill -9: it shows the overflow and the SYN cookies in its tables and
// its diagnosis, and whatever the end, no listenwatch program stays
// loaded, its namespace is gone and ip netns list is as before.
func TestDemo(t *testing.T) {
	need(t, events.StageSYN, events.StageAccept)
	bin := buildAgent(t)
	programs := listenwatchPrograms(t) // this test process's own tracer
	netnsBefore, _ := exec.Command("ip", "netns", "list").Output()

	for _, end := range []string{"completes", "SIGINT", "SIGKILL"} {
		t.Run(end, func(t *testing.T) {
			cmd := exec.Command(bin, "demo")
			stdout, _ := cmd.StdoutPipe()
			var stderr strings.Builder
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			var inode uint64
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := sc.Text()
				out.WriteString(line + "\n")
				if m := demoNetns.FindStringSubmatch(line); m != nil && inode == 0 {
					inode, _ = strconv.ParseUint(m[1], 10, 64)
				}
				if end != "completes" && strings.HasPrefix(line, "== 2/4") {
					// Mid-burst: the namespace, its server and the programs
					// are all there now.
					time.Sleep(time.Second)
					if !netnsExists(inode) || listenwatchPrograms(t) <= programs {
						t.Errorf("mid-demo: namespace %d there %v, programs %d (before %d)", inode, netnsExists(inode), listenwatchPrograms(t), programs)
					}
					sig := syscall.SIGINT
					if end == "SIGKILL" {
						sig = syscall.SIGKILL
					}
					cmd.Process.Signal(sig)
				}
			}
			err := cmd.Wait()
			took := time.Since(start)
			t.Logf("demo (%s) took %v; stderr: %s", end, took, stderr.String())
			switch end {
			case "completes":
				if err != nil {
					t.Fatalf("demo: %v\n%s", err, out.String())
				}
				s := out.String()
				for _, want := range []string{"0.0.0.0:8080", "== 3/4 a SYN flood", "accept queue of 0.0.0.0:8080", "overflowed",
					"SYN cookies sent", "net.core.somaxconn 4096"} {
					if !strings.Contains(s, want) {
						t.Errorf("demo output lacks %q:\n%s", want, s)
					}
				}
				if took > 45*time.Second {
					t.Errorf("the demo took %v, it says about 30 s", took)
				}
			case "SIGINT":
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted") {
					t.Errorf("after SIGINT: %v, stderr %q; want exit 130 and one line", err, stderr.String())
				}
			}
			if inode == 0 {
				t.Fatalf("the demo did not name its namespace:\n%s", out.String())
			}
			// The server process dies with the demo's namespace thread
			// (parent-death signal): give the kernel a moment.
			eventually(t, settle, func() (bool, string) {
				return !netnsExists(inode), fmt.Sprintf("namespace %d still held after the demo", inode)
			})
			eventually(t, settle, func() (bool, string) {
				n := listenwatchPrograms(t)
				return n == programs, fmt.Sprintf("%d listenwatch programs loaded, %d before the demo", n, programs)
			})
			if after, _ := exec.Command("ip", "netns", "list").Output(); string(after) != string(netnsBefore) {
				t.Errorf("ip netns list changed:\n%s\nnow\n%s", netnsBefore, after)
			}
			// The flood's veth pair lived in the namespace: gone with it,
			// and never on the host.
			if out, err := exec.Command("ip", "link", "show", "lwsink").CombinedOutput(); err == nil {
				t.Errorf("a veth of the demo is on the host: %s", out)
			}
		})
	}
}
