package main

import (
	"bytes"
	"strings"
	"testing"
)

// What one extra program costs is the difference per extra program; the
// summary takes the median of each state's rounds.
func TestPrintMeter(t *testing.T) {
	rs := []meterReading{
		{stats: false, one: 270, many: 270 + 20*60},
		{stats: true, one: 390, many: 390 + 20*140, reportedNsRun: 58},
		{stats: false, one: 280, many: 280 + 20*62},
		{stats: true, one: 395, many: 395 + 20*142, reportedNsRun: 57},
		{stats: false, one: 275, many: 275 + 20*61},
		{stats: true, one: 392, many: 392 + 20*141, reportedNsRun: 59},
	}
	if got := rs[0].perProgram(); got != 60 {
		t.Errorf("perProgram = %.1f, want 60", got)
	}
	var b bytes.Buffer
	printMeter(&b, rs)
	want := "costs 61.0 ns with bpf_stats off, 141.0 ns with it on; bpf_stats reports 58.0 ns of it"
	if !strings.Contains(b.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, b.String())
	}
}
