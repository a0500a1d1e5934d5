package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// emptyProbe is a program that returns at once, attached to
// inet_sock_set_state beside the agent's programs during a BPF round.
// bpf_stats times every run with two sched_clock() reads (kvm-clock here,
// a paravirtual read), and part of them falls inside the interval it
// reports: what it reads for a program that does nothing is the meter's
// own floor per run, paid by every run of every program in the figures.
// Measured here by hand, not by this harness: an empty program on
// sys_enter, with bpf_stats off, adds 60 ns to each getppid (dispatch
// and program); with bpf_stats on it adds 141 ns, and bpf_stats reports
// 56-59 ns of it as the program's run time.
type emptyProbe struct {
	prog *ebpf.Program
	link link.Link
}

func attachEmptyProbe() (*emptyProbe, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "lwbench_empty",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     "inet_sock_set_state",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("empty program for the meter's floor: %w", err)
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("attach the empty program to inet_sock_set_state: %w", err)
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
