package main

import (
	"bytes"
	"strings"
	"testing"
)

// The BPF section prints both figures, the target on the server side's
// only, and says so when the server side was not measured.
func TestPrintTableBPFSections(t *testing.T) {
	r := &result{
		Kernel: "6.18", Cores: 2, RoundSeconds: 2,
		BPF:          []progCost{{Name: "lw_tp_state", Runs: 660, NsPerRun: 150, NsPerConn: 990}},
		BPFNsPerConn: 2089, BPFFloorNsPerRun: 64, BPFFloorPerConn: 571,
		BPFServer: &bpfFigure{Programs: []progCost{{Name: "lw_tp_state", Runs: 330, NsPerRun: 159, NsPerConn: 523}},
			NsPerConn: 1506, FloorNsPerRun: 63, FloorPerConn: 486},
	}
	var b bytes.Buffer
	printTable(&b, r)
	out := b.String()
	for _, want := range []string{
		"BPF time per accepted connection: 2089 ns\n",
		"of which the meter's floor: 571 ns",
		"server side only (TUN client",
		"BPF time per accepted connection: 1506 ns   (target <= 1200)",
		"of which the meter's floor: 486 ns (an empty program read 63 ns/run",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Count(out, "(target <= 1200)") != 1 {
		t.Errorf("the target belongs to the server-side figure only:\n%s", out)
	}
	r.BPFServer = nil
	b.Reset()
	printTable(&b, r)
	if !strings.Contains(b.String(), "server side only: not measured") {
		t.Errorf("no server-side figure and nothing said:\n%s", b.String())
	}
}
