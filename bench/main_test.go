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
			NsPerConn: 1506, FloorNsPerRun: 63, FloorPerConn: 486, Rounds: []float64{1790, 1506, 1499}},
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
		"the median of 3 rounds (ns/conn: 1790, 1506, 1499)",
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

// The median round is reported whole (its table), not a mix of rounds;
// one slow round does not move it.
func TestMedianRound(t *testing.T) {
	mk := func(ns float64) bpfTotals {
		return bpfTotals{conns: 1000, secs: map[string]float64{"p": ns * 1000 / 1e9}, runs: map[string]float64{"p": 1000}}
	}
	all := []bpfTotals{mk(1790), mk(1334), mk(1352)}
	m, rounds := medianRound(all)
	if got := m.nsPerConn(); got < 1351 || got > 1353 {
		t.Fatalf("median round %.0f ns/conn, want 1352", got)
	}
	if len(rounds) != 3 || rounds[0] < 1789 || rounds[0] > 1791 {
		t.Fatalf("rounds %v: want every round's figure in run order", rounds)
	}
	m, _ = medianRound([]bpfTotals{mk(1400), mk(1300)})
	if got := m.nsPerConn(); got < 1299 || got > 1301 {
		t.Fatalf("even count: %.0f, want the lower middle 1300", got)
	}
	m, _ = medianRound([]bpfTotals{mk(1234)})
	if got := m.nsPerConn(); got < 1233 || got > 1235 {
		t.Fatalf("one round: %.0f", got)
	}
}
