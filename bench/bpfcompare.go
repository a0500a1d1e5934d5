package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

var (
	bpfBaseline = flag.String("bpf-baseline", "", "another agent binary (before a change): compare its BPF cost with -agent's, per program, rounds in A B B A order")
	bpfPairs    = flag.Int("bpf-pairs", 6, "BPF cost pairs with -bpf-baseline")
)

// runBPFCompare measures the BPF time per accepted connection of two agent
// binaries side by side in one run: the same storm, rounds alternating
// A B B A, so that the machine's drift over the run (this VM's speed
// varies by 2x from one day to the next, and by 10-20% within minutes)
// falls on both alike. It prints, per program, runs per connection, ns
// per run and ns per connection before and after, and the ratio of the
// totals per pair (median, bootstrap 95% CI).
func runBPFCompare() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (BPF, network namespaces)")
	}
	if *bpfPairs < 1 {
		return errors.New("-bpf-pairs must be at least 1")
	}
	for _, bin := range []string{*bpfBaseline, *agentBin} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("agent binary: %w", err)
		}
	}
	ns, srv, cleanup, err := stormSetup()
	if err != nil {
		return err
	}
	defer cleanup()
	restore, err := enableBPFStats()
	if err != nil {
		return err
	}
	defer restore()

	var before, after bpfTotals
	var ratios []float64
	// Per program too: a change to one program is decided on its own
	// ratio, not diluted by the others' noise.
	progRatios := map[string][]float64{}
	for i := range *bpfPairs {
		var r [2]bpfTotals // 0: baseline, 1: agent
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, which := range order {
			bin := *bpfBaseline
			if which == 1 {
				bin = *agentBin
			}
			t, err := bpfRound(ns, srv, bin)
			if err != nil {
				return fmt.Errorf("pair %d, %s: %w", i+1, bin, err)
			}
			r[which] = t
		}
		before.add(r[0])
		after.add(r[1])
		ratios = append(ratios, r[1].nsPerConn()/r[0].nsPerConn())
		for name := range r[1].secs {
			if b := r[0].nsPerConnOf(name); b > 0 {
				progRatios[name] = append(progRatios[name], r[1].nsPerConnOf(name)/b)
			}
		}
		fmt.Fprintf(os.Stderr, "pair %d: before %.0f ns/conn, after %.0f ns/conn, ratio %.3f\n",
			i+1, r[0].nsPerConn(), r[1].nsPerConn(), ratios[i])
	}
	printBPFCompare(os.Stdout, before, after, ratios, progRatios)
	return nil
}

// printBPFCompare prints the table: per program, runs per connection, ns
// per run and ns per connection before and after, and the median of the
// pairs' after/before with its bootstrap 95% CI; then the totals, and the
// meter's floor (what an empty program read in the same rounds).
func printBPFCompare(w io.Writer, before, after bpfTotals, ratios []float64, progRatios map[string][]float64) {
	fmt.Fprintf(w, "\nBPF time per accepted connection, %s (before) vs %s (after), %d pairs of %.0fs, %s\n\n",
		*bpfBaseline, *agentBin, len(ratios), roundDur.Seconds(), clientDesc())
	fmt.Fprintf(w, "%-16s %26s   %26s   %s\n", "", "before", "after", "after/before")
	fmt.Fprintf(w, "%-16s %8s %8s %8s   %8s %8s %8s   %s\n", "program", "runs/c", "ns/run", "ns/conn", "runs/c", "ns/run", "ns/conn", "median [95% CI]")
	b, a := map[string]progCost{}, map[string]progCost{}
	for _, p := range before.programs() {
		b[p.Name] = p
	}
	for _, p := range after.programs() {
		a[p.Name] = p
	}
	for _, p := range after.programs() {
		printBPFRow(w, p.Name, b[p.Name], a[p.Name], before.conns, after.conns, progRatios[p.Name])
	}
	for _, p := range before.programs() {
		if _, ok := a[p.Name]; !ok {
			printBPFRow(w, p.Name, b[p.Name], progCost{}, before.conns, after.conns, nil)
		}
	}
	fmt.Fprintf(w, "%-16s %8s %8s %8.0f   %8s %8s %8.0f   %s\n", "total", "", "", before.nsPerConn(), "", "", after.nsPerConn(), ratioCI(ratios))
	fmt.Fprintf(w, "\nThe meter's floor: an empty program on inet_sock_set_state read %.0f ns/run before, %.0f after;\n",
		before.floorNsPerRun(), after.floorNsPerRun())
	fmt.Fprintf(w, "times all programs' runs, %.0f ns/conn of the total before, %.0f after, that programs doing nothing would read.\n\n",
		before.floorNsPerConn(), after.floorNsPerConn())
}

// ratioCI is a median of pair ratios with its bootstrap 95% CI.
func ratioCI(v []float64) string {
	if len(v) == 0 {
		return ""
	}
	lo, hi := bootstrapMedianCI(v)
	return fmt.Sprintf("%.3f [%.3f, %.3f]", median(v), lo, hi)
}

func printBPFRow(w io.Writer, name string, b, a progCost, bc, ac float64, ratios []float64) {
	if b.Runs == 0 && a.Runs == 0 {
		return
	}
	fmt.Fprintf(w, "%-16s %8.2f %8.0f %8.0f   %8.2f %8.0f %8.0f   %s\n", name,
		b.Runs/bc, b.NsPerRun, b.NsPerConn, a.Runs/ac, a.NsPerRun, a.NsPerConn, ratioCI(ratios))
}
