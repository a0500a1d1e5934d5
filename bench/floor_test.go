package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// The hooks come from the committed BPF object, by the names the agent
// exports its programs under: a renamed or new program fails here, not
// in a bench run that would then mirror the wrong hooks.
func TestAgentHooks(t *testing.T) {
	obj := filepath.Join("..", agentObject())
	got, err := agentHooks(obj, []string{"lw_tp_state", "lw_tp_accept4", "lw_tp_accept", "lw_tp_consume", "lw_tp_kfree", "lw_tp_synack"})
	if err != nil {
		t.Fatal(err)
	}
	want := "tp_btf/consume_skb tp_btf/inet_sock_set_state tp_btf/kfree_skb tp_btf/tcp_retransmit_synack tracepoint/syscalls/sys_exit_accept tracepoint/syscalls/sys_exit_accept4"
	if s := strings.Join(got, " "); s != want {
		t.Errorf("hooks:\n got %s\nwant %s", s, want)
	}
	if _, err := agentHooks(obj, []string{"lw_no_such_program"}); err == nil {
		t.Error("a program the object does not have: no error")
	}
	if _, err := agentHooks(obj, nil); err == nil {
		t.Error("no programs (no throughput pair ran): no error")
	}
}

// A hook of a kind it cannot mirror fails the floor, and one that would
// attach nowhere is no floor either.
func TestAttachFloorRefusesOtherKinds(t *testing.T) {
	for _, h := range []string{"xdp", "uprobe/x", "tracepoint/no_group"} {
		if _, err := attachFloor([]string{h}); err == nil {
			t.Errorf("%s: no error", h)
		}
	}
}

func TestPrintFloor(t *testing.T) {
	f := &floorResult{Variants: []floorVariant{
		{Hooks: []string{"tp_btf/consume_skb", "tracepoint/syscalls/sys_exit_accept4"}, Ratios: []float64{0.93, 0.94, 0.95}, Median: 0.94, MedianCI: [2]float64{0.93, 0.95}},
		{Hooks: []string{"tp_btf/consume_skb"}, Ratios: []float64{0.98, 0.99, 1.0}, Median: 0.99, MedianCI: [2]float64{0.98, 1.0}},
	}}
	var b bytes.Buffer
	printFloor(&b, "throughput ratio", f)
	want := `  throughput ratio with programs that return at once on the agent's hooks (the hooks' dispatch and the syscall tax, no work), median of 3 pairs: 0.940, 95% CI [0.930, 0.950]
  throughput ratio with programs that return at once on the agent's hooks but its syscall tracepoints (the hooks' dispatch, no work), median of 3 pairs: 0.990, 95% CI [0.980, 1.000]
    (the agent's hooks: tp_btf/consume_skb, tracepoint/syscalls/sys_exit_accept4)

`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// The floor attaches on this kernel where the agent's own hooks do (root;
// tracepoint mode's hooks here), and detaches: a program left behind
// would tax every later round.
func TestAttachFloorOnTheAgentsHooks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF)")
	}
	hooks, err := agentHooks(filepath.Join("..", agentObject()), []string{"lw_tp_state", "lw_tp_accept4"})
	if err != nil {
		t.Fatal(err)
	}
	before := floorPrograms(t)
	detach, err := attachFloor(hooks)
	if err != nil {
		t.Fatal(err)
	}
	if n := floorPrograms(t) - before; n != len(hooks) {
		t.Errorf("%d floor programs loaded for %d hooks", n, len(hooks))
	}
	detach()
	// A link's release, and with it the program's, runs in a kernel
	// work item after the close returns.
	n := floorPrograms(t) - before
	for end := time.Now().Add(10 * time.Second); n != 0 && time.Now().Before(end); n = floorPrograms(t) - before {
		time.Sleep(50 * time.Millisecond)
	}
	if n != 0 {
		t.Errorf("%d floor programs left 10 s after detaching", n)
	}
}

// floorPrograms counts the loaded programs named lwbench_floor.
func floorPrograms(t *testing.T) int {
	t.Helper()
	n := 0
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return n
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && info.Name == "lwbench_floor" {
			n++
		}
		p.Close()
	}
}
