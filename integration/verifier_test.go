package integration

import (
	"testing"

	"github.com/cilium/ebpf"
)

// verifierBudget is the kernel's limit on the instructions its verifier
// walks for one program loaded with CAP_BPF (BPF_COMPLEXITY_LIMIT_INSNS).
const verifierBudget = 1_000_000

// verifierHeadroom is how much of the budget one kernel may use: the same
// program walks 318,244 instructions on 6.12, 450,537 on 6.18 and 458,398
// on 7.3.4 (tracepoint mode's SYN program, this tree; one revision earlier
// 293,362, 435,185 and 477,706): kernels differ by up to 1.6x, so a
// program over 60% on one of them may not load on another.
const verifierHeadroom = 0.6

// TestVerifierHeadroom: every program the tracer attached was verified
// within verifierHeadroom of the verifier's budget. Tracepoint mode's SYN
// program (a loop over the group's sockets) is the heavy one: a change
// that let its paths multiply went past the limit, and the agent could
// then only report a SYN stage that did not attach. The counts are the
// kernel's, exact for a kernel and a program: this fails when a change
// takes a program too close, not at random.
func TestVerifierHeadroom(t *testing.T) {
	ids, err := tracer.ProgramIDs()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) == 0 {
		t.Fatal("the tracer attached no program")
	}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatalf("program %d: %v", id, err)
		}
		info, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatalf("program %d: %v", id, err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			t.Skip("this kernel does not report verified instructions (5.16+)")
		}
		t.Logf("%-16s %7d instructions verified (%.0f%% of the budget)", info.Name, n, 100*float64(n)/verifierBudget)
		if float64(n) > verifierHeadroom*verifierBudget {
			t.Errorf("%s: %d instructions verified, over %.0f%% of the verifier's budget of %d", info.Name, n, 100*verifierHeadroom, verifierBudget)
		}
	}
}
