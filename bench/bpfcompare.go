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
		fmt.Fprintf(os.Stderr, "pair %d: before %.0f ns/conn, after %.0f ns/conn, ratio %.3f\n",
			i+1, r[0].nsPerConn(), r[1].nsPerConn(), ratios[i])
	}
	lo, hi := bootstrapMedianCI(ratios)
	printBPFCompare(os.Stdout, before, after, median(ratios), lo, hi)
	return nil
}

func printBPFCompare(w io.Writer, before, after bpfTotals, ratio, lo, hi float64) {
	fmt.Fprintf(w, "\nBPF time per accepted connection, %s (before) vs %s (after), %d pairs of %.0fs, %d clients\n\n",
		*bpfBaseline, *agentBin, *bpfPairs, roundDur.Seconds(), *clients)
	fmt.Fprintf(w, "%-16s %26s   %26s\n", "", "before", "after")
	fmt.Fprintf(w, "%-16s %8s %8s %8s   %8s %8s %8s\n", "program", "runs/c", "ns/run", "ns/conn", "runs/c", "ns/run", "ns/conn")
	b, a := map[string]progCost{}, map[string]progCost{}
	for _, p := range before.programs() {
		b[p.Name] = p
	}
	for _, p := range after.programs() {
		a[p.Name] = p
	}
	for _, p := range after.programs() {
		printBPFRow(w, p.Name, b[p.Name], a[p.Name], before.conns, after.conns)
	}
	for _, p := range before.programs() {
		if _, ok := a[p.Name]; !ok {
			printBPFRow(w, p.Name, b[p.Name], progCost{}, before.conns, after.conns)
		}
	}
	fmt.Fprintf(w, "%-16s %8s %8s %8.0f   %8s %8s %8.0f\n", "total", "", "", before.nsPerConn(), "", "", after.nsPerConn())
	fmt.Fprintf(w, "after/before per pair, median of %d: %.3f, 95%% CI [%.3f, %.3f]\n\n", *bpfPairs, ratio, lo, hi)
}

func printBPFRow(w io.Writer, name string, b, a progCost, bc, ac float64) {
	if b.Runs == 0 && a.Runs == 0 {
		return
	}
	fmt.Fprintf(w, "%-16s %8.2f %8.0f %8.0f   %8.2f %8.0f %8.0f\n", name,
		b.Runs/bc, b.NsPerRun, b.NsPerConn, a.Runs/ac, a.NsPerRun, a.NsPerConn)
}
