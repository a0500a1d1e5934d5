package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestDoctorCommand: `listenwatch doctor` on three namespaces it did not
// see created: one whose somaxconn caps a listener, one whose owner is at
// 90% of its fd limit (exit 1, both named with their knob), and a healthy
// one (exit 0).
func TestDoctorCommand(t *testing.T) {
	bin := buildAgent(t)
	capped, leaky, healthy := newNS(t), newNS(t), newNS(t)
	if err := capped.Sysctl("net.core.somaxconn", "16"); err != nil {
		t.Fatal(err)
	}
	listen(t, capped, netip.MustParseAddrPort("127.0.0.1:8686"), 128)
	listen(t, healthy, netip.MustParseAddrPort("127.0.0.1:8686"), 128)

	// The leaky owner: podapp holding 40 more fds under a limit of 50.
	podapp := podappBinary(t, t.TempDir())
	app := exec.Command("ip", "netns", "exec", leaky.Name, "prlimit", "--nofile=50:50", "--", podapp, "127.0.0.1:8686", "16", "40")
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { app.Process.Signal(syscall.SIGTERM); app.Wait() }()
	eventually(t, settle, func() (bool, string) {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", app.Process.Pid))
		return len(fds) >= 44, fmt.Sprintf("podapp holds %d fds", len(fds))
	})

	run := func(args ...string) (int, string, string) {
		cmd := exec.Command(bin, append([]string{"doctor", "--cri-endpoint", "none"}, args...)...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}

	code, out, stderr := run("--netns", capped.Name, "--netns", leaky.Name, "-o", "json")
	if code != 1 {
		t.Fatalf("doctor on the capped and leaky namespaces: exit %d, want 1\n%s%s", code, out, stderr)
	}
	var rep struct {
		Stages []struct {
			Stage, Mode string
			NodeCost    string `json:"node_cost"`
		}
		Namespaces []struct {
			Netns     uint32
			Somaxconn int64
		}
		Risks []struct {
			Netns               uint32
			Port                uint16
			Kind, Knob, Message string
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor -o json: %v\n%s", err, out)
	}
	found := map[string]bool{}
	for _, r := range rep.Risks {
		switch {
		case r.Netns == capped.Inode && r.Knob == "net.core.somaxconn" && strings.Contains(r.Message, "effective backlog 16"):
			found["capped"] = true
		case r.Netns == leaky.Inode && r.Knob == "RLIMIT_NOFILE" && strings.Contains(r.Message, "of 50 file descriptors"):
			found["leaky"] = true
		default:
			t.Errorf("unexpected risk: %+v", r)
		}
	}
	if !found["capped"] || !found["leaky"] {
		t.Errorf("risks %+v: want the somaxconn cap in netns %d and the fd limit in netns %d", rep.Risks, capped.Inode, leaky.Inode)
	}
	if len(rep.Stages) == 0 || len(rep.Namespaces) != 2 {
		t.Errorf("report lacks stages or namespaces: %s", out)
	}
	// A syscall tracepoint slows every syscall on the node: the report
	// says so for the accept stage in tracepoint mode, and only then.
	acceptTP := false
	for _, s := range rep.Stages {
		syscalls := s.Stage == "accept" && s.Mode == "tracepoint"
		acceptTP = acceptTP || syscalls
		if syscalls != strings.Contains(s.NodeCost, "every syscall") {
			t.Errorf("stage %s in %s mode: node_cost %q", s.Stage, s.Mode, s.NodeCost)
		}
	}
	for _, n := range rep.Namespaces {
		if n.Netns == capped.Inode && n.Somaxconn != 16 {
			t.Errorf("netns %d: somaxconn %d, want 16 (read inside the namespace)", n.Netns, n.Somaxconn)
		}
	}

	code, out, stderr = run("--netns", healthy.Name)
	if code != 0 || !strings.Contains(out, "nothing at risk") {
		t.Errorf("doctor on a healthy namespace: exit %d, want 0\n%s%s", code, out, stderr)
	}
	if acceptTP != strings.Contains(out, "cost of accept in tracepoint mode: every syscall") {
		t.Errorf("accept in tracepoint mode: %v, but the text report says:\n%s", acceptTP, out)
	}
	code, _, stderr = run("--netns", "no-such-namespace")
	if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("unknown namespace: exit %d, stderr %q: want 2 and one line", code, stderr)
	}
	t.Logf("doctor text report of the healthy namespace:\n%s", out)
}
