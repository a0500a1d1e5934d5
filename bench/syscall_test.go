package main

import (
	"bytes"
	"strings"
	"testing"
)

// The extra time is paired round by round: a machine that drifts slower
// over the run moves both sides of a pair and not the difference.
func TestSyscallTaxPairsRounds(t *testing.T) {
	tax := &syscallTax{
		Variants: []string{"no agent", "agent", "agent, no accept stages"},
		Rounds: [][]float64{
			{200, 300, 400},
			{240, 340, 440},
			{210, 310, 410},
		},
	}
	tax.summarize()
	if tax.Median[0] != 300 || tax.Median[1] != 340 {
		t.Errorf("medians %v, want 300 and 340 first", tax.Median)
	}
	if tax.Extra[0] != 0 || tax.Extra[1] != 40 || tax.Extra[2] != 10 {
		t.Errorf("extra %v, want 0, 40, 10 (each pair's difference)", tax.Extra)
	}
	// Every pair differs by exactly 40: the interval cannot be wider.
	if ci := tax.ExtraCI[1]; ci[0] != 40 || ci[1] != 40 {
		t.Errorf("CI %v, want [40, 40]", ci)
	}
	var b bytes.Buffer
	printSyscallTax(&b, tax)
	out := b.String()
	for _, want := range []string{"no agent", "+40.0 [+40.0, +40.0]", "agent, no accept stages", "+10.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
