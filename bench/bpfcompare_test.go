package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

// Rounds add up as totals, not as an average of per-round figures: a
// short round weighs what its connections weigh.
func TestBPFTotals(t *testing.T) {
	var tot bpfTotals
	tot.add(bpfTotals{conns: 1000, secs: map[string]float64{"a": 1e-3, "b": 2e-3}, runs: map[string]float64{"a": 6000, "b": 1000}})
	tot.add(bpfTotals{conns: 3000, secs: map[string]float64{"a": 3e-3}, runs: map[string]float64{"a": 18000}})
	progs := tot.programs()
	if len(progs) != 2 || progs[0].Name != "a" || progs[1].Name != "b" {
		t.Fatalf("programs %+v: want a, b in order", progs)
	}
	a := progs[0]
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-9*math.Max(1, want) }
	if !near(a.Runs, 24000) || !near(a.NsPerRun, 4e6/24000) || !near(a.NsPerConn, 1000) {
		t.Errorf("a: %+v, want 24000 runs, %.1f ns/run, 1000 ns/conn", a, 4e6/24000)
	}
	if b := progs[1]; !near(b.NsPerConn, 500) {
		t.Errorf("b: %.1f ns/conn, want 500 (2 ms over all 4000 connections)", b.NsPerConn)
	}
	if !near(tot.nsPerConn(), 1500) {
		t.Errorf("total %.1f ns/conn, want 1500", tot.nsPerConn())
	}
}

// A program only one side has still gets a row; each program has its own
// ratio; the meter's floor is an empty program's ns per run times all
// programs' runs.
func TestPrintBPFCompare(t *testing.T) {
	before := bpfTotals{conns: 100, secs: map[string]float64{"old": 1e-4, "both": 2e-4}, runs: map[string]float64{"old": 100, "both": 600},
		emptyRuns: 1000, emptySecs: 1e-4}
	after := bpfTotals{conns: 100, secs: map[string]float64{"new": 5e-5, "both": 1e-4}, runs: map[string]float64{"new": 100, "both": 600},
		emptyRuns: 1000, emptySecs: 5e-5}
	var b bytes.Buffer
	printBPFCompare(&b, before, after, []float64{0.5, 0.5, 0.5}, map[string][]float64{"both": {0.25, 0.25}})
	out := b.String()
	for _, want := range []string{"old ", "new ", "both ", "0.250 [0.250, 0.250]", "0.500 [0.500, 0.500]",
		"read 100 ns/run before, 50 after", "700 ns/conn of the total before, 350 after"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "3000") || !strings.Contains(out, "1500") {
		t.Errorf("totals 3000 and 1500 ns/conn not printed:\n%s", out)
	}
}
