package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// emptyProbe is a program that returns at once, attached to
// inet_sock_set_state beside the agent's programs during a BPF round.
// bpf_stats times every run with two sched_clock() reads (kvm-clock here,
// a paravirtual read), and part of them falls inside the interval it
// reports: what it reads for a program that does nothing is the meter's
// own floor per run, paid by every run of every program in the figures
// (go run ./bench -meter measures what the meter adds and what it reads).
type emptyProbe struct {
	prog *ebpf.Program
	link link.Link
}

func attachEmptyProbe() (*emptyProbe, error) { return attachEmpty("inet_sock_set_state") }

// attachEmpty attaches a program that returns at once to the BTF
// tracepoint tp.
func attachEmpty(tp string) (*emptyProbe, error) {
	prog, l, err := emptyOn("tp_btf/"+tp, "lwbench_empty")
	if err != nil {
		return nil, fmt.Errorf("empty program on %s for the meter: %w", tp, err)
	}
	return &emptyProbe{prog: prog, link: l}, nil
}

// stats returns the probe's run count and run time in seconds so far.
func (e *emptyProbe) stats() (runs, secs float64, err error) {
	s, err := e.prog.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("empty program's stats: %w", err)
	}
	return float64(s.RunCount), s.Runtime.Seconds(), nil
}

func (e *emptyProbe) close() {
	e.link.Close()
	e.prog.Close()
}

var (
	meterMode  = flag.Bool("meter", false, "measure the meter: what kernel.bpf_stats_enabled adds to each run of a program, and what it reports for a program that does nothing")
	meterCalls = flag.Int("meter-calls", 2000000, "getppid calls per reading with -meter")
)

// meterReading is one round of -meter: with bpf_stats off or on, ns per
// getppid with 1 and with meterExtra+1 empty programs on sys_enter, and
// what bpf_stats reported per run of one of them.
type meterReading struct {
	stats         bool
	one, many     float64
	reportedNsRun float64
}

const meterExtra = 20

// perProgram is what one more program adds to each run of the tracepoint.
func (m meterReading) perProgram() float64 { return (m.many - m.one) / meterExtra }

// runMeter measures the meter itself. Empty programs on sys_enter (a
// tracepoint this process fires at will, with getppid): 1, then 21 of
// them; the difference per extra program is what one run really costs
// (the tracepoint's dispatch to it and its body). With bpf_stats on, each
// run also reads the clock twice; what bpf_stats reports for the empty
// program is then mostly that. Rounds alternate off, on, three times.
func runMeter() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (BPF)")
	}
	// Puts the old value back at the end; each round then sets its own.
	restore, err := enableBPFStats()
	if err != nil {
		return err
	}
	defer restore()
	var out []meterReading
	for range 3 {
		for _, on := range []bool{false, true} {
			r, err := meterRound(on)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
	}
	printMeter(os.Stdout, out)
	return nil
}

func meterRound(on bool) (meterReading, error) {
	v := []byte("0")
	if on {
		v = []byte("1")
	}
	if err := os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", v, 0); err != nil {
		return meterReading{}, err
	}
	var progs []*emptyProbe
	defer func() {
		for _, p := range progs {
			p.close()
		}
	}()
	attach := func(n int) error {
		for len(progs) < n {
			p, err := attachEmpty("sys_enter")
			if err != nil {
				return err
			}
			progs = append(progs, p)
		}
		return nil
	}
	r := meterReading{stats: on}
	if err := attach(1); err != nil {
		return r, err
	}
	runs0, secs0, err := progs[0].stats()
	if err != nil {
		return r, err
	}
	r.one = nsPerSyscall(*meterCalls)
	runs1, secs1, err := progs[0].stats()
	if err != nil {
		return r, err
	}
	if on && runs1 > runs0 {
		r.reportedNsRun = (secs1 - secs0) * 1e9 / (runs1 - runs0)
	}
	if err := attach(meterExtra + 1); err != nil {
		return r, err
	}
	r.many = nsPerSyscall(*meterCalls)
	return r, nil
}

func printMeter(w io.Writer, rs []meterReading) {
	fmt.Fprintf(w, "\nThe meter: empty programs on sys_enter, ns per getppid with 1 and %d of them\n\n", meterExtra+1)
	fmt.Fprintf(w, "%-10s %10s %10s %16s %18s\n", "bpf_stats", "1 prog", fmt.Sprintf("%d progs", meterExtra+1), "ns per prog run", "bpf_stats reports")
	var off, on, rep []float64
	for _, r := range rs {
		state, reported := "off", ""
		if r.stats {
			state, reported = "on", fmt.Sprintf("%.1f ns/run", r.reportedNsRun)
			on = append(on, r.perProgram())
			rep = append(rep, r.reportedNsRun)
		} else {
			off = append(off, r.perProgram())
		}
		fmt.Fprintf(w, "%-10s %10.1f %10.1f %16.1f %18s\n", state, r.one, r.many, r.perProgram(), reported)
	}
	fmt.Fprintf(w, "\nmedian: a run of an empty program costs %.1f ns with bpf_stats off, %.1f ns with it on; bpf_stats reports %.1f ns of it\n",
		median(off), median(on), median(rep))
}
