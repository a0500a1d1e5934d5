package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

var floorPairs = flag.Int("floor-pairs", 10, "pairs of rounds (throughput, and fixed load unless -cost-pairs 0) with programs that return at once on the agent's hooks instead of the agent, against nothing attached, in A B C C B A order (0: skip): the most any program on those hooks could keep")

// The floor of a mode: the agent's throughput ratio counts what its
// programs do and what merely having a program on each of its hooks costs
// (the tracepoints' dispatch, and in tracepoint mode the slow syscall path
// that a syscall tracepoint puts every thread on). Programs that return at
// once, on the same hooks, cost only the second: their ratio is the
// ceiling no work in the programs can raise.

// floorResult is one figure's floor pairs: one variant per hook set.
type floorResult struct {
	Variants []floorVariant `json:"variants"`
}

type floorVariant struct {
	Hooks    []string   `json:"hooks"`
	Ratios   []float64  `json:"ratios"`
	Median   float64    `json:"median_ratio"`
	MedianCI [2]float64 `json:"median_ratio_ci95"`
}

// agentHooks are the attach points (ELF section names) of the programs
// the agent runs, read from the committed BPF object: the bench follows
// the programs as they change, with no list of its own.
func agentHooks(obj string, progs []string) ([]string, error) {
	if len(progs) == 0 {
		return nil, errors.New("floor: the agent's programs are learnt in the throughput pairs: -floor-pairs needs -pairs > 0")
	}
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		return nil, fmt.Errorf("floor: the agent's hooks: %w (run from the repository's top)", err)
	}
	seen := map[string]bool{}
	var hooks []string
	for _, p := range progs {
		ps, ok := spec.Programs[p]
		if !ok {
			return nil, fmt.Errorf("floor: the agent runs %s, which %s does not have", p, obj)
		}
		if !seen[ps.SectionName] {
			seen[ps.SectionName] = true
			hooks = append(hooks, ps.SectionName)
		}
	}
	sort.Strings(hooks)
	return hooks, nil
}

// agentObject is the committed BPF object of this machine's architecture,
// from the repository's top (where make bench runs).
func agentObject() string {
	arch := map[string]string{"amd64": "x86", "arm64": "arm64"}[runtime.GOARCH]
	return filepath.Join("loader", "bpf_"+arch+"_bpfel.o")
}

// attachFloor attaches a program that returns at once to each hook, an
// ELF section name of the agent's object; a kind of hook it does not know
// is an error, not a smaller floor.
func attachFloor(hooks []string) (func(), error) {
	var closers []io.Closer
	closeAll := func() {
		for _, c := range closers {
			c.Close()
		}
	}
	for _, h := range hooks {
		prog, l, err := emptyOn(h, "lwbench_floor")
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("floor: empty program on %s: %w", h, err)
		}
		closers = append([]io.Closer{l}, closers...) // links close first
		closers = append(closers, prog)
	}
	return closeAll, nil
}

// emptyOn loads a program named name that returns at once for hook
// (tp_btf/TP, tracepoint/GROUP/NAME, fentry/FN, fexit/FN, kprobe/FN,
// kretprobe/FN: the kinds of every mode) and attaches it there.
func emptyOn(hook, name string) (*ebpf.Program, link.Link, error) {
	kind, target, _ := strings.Cut(hook, "/")
	spec := &ebpf.ProgramSpec{Name: name, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}}
	var attach func(*ebpf.Program) (link.Link, error)
	tracing := func(p *ebpf.Program) (link.Link, error) {
		return link.AttachTracing(link.TracingOptions{Program: p})
	}
	switch kind {
	case "tp_btf", "fentry", "fexit":
		spec.Type, spec.AttachTo = ebpf.Tracing, target
		spec.AttachType = map[string]ebpf.AttachType{"tp_btf": ebpf.AttachTraceRawTp,
			"fentry": ebpf.AttachTraceFEntry, "fexit": ebpf.AttachTraceFExit}[kind]
		attach = tracing
	case "tracepoint":
		group, name, ok := strings.Cut(target, "/")
		if !ok {
			return nil, nil, errors.New("want tracepoint/GROUP/NAME")
		}
		spec.Type = ebpf.TracePoint
		attach = func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint(group, name, p, nil) }
	case "kprobe":
		spec.Type = ebpf.Kprobe
		attach = func(p *ebpf.Program) (link.Link, error) { return link.Kprobe(target, p, nil) }
	case "kretprobe":
		spec.Type = ebpf.Kprobe
		attach = func(p *ebpf.Program) (link.Link, error) { return link.Kretprobe(target, p, nil) }
	default:
		return nil, nil, fmt.Errorf("no floor for a %s program", kind)
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return nil, nil, err
	}
	l, err := attach(prog)
	if err != nil {
		prog.Close()
		return nil, nil, err
	}
	return prog, l, nil
}

// floorRun alternates a round with nothing attached and one with the
// empty programs on each hook set (A B C, then C B A, ...), like the
// agent's pairs. The hook sets: all the agent's hooks, and, where some of
// them are syscall tracepoints, the others alone (what the same programs
// would cost without the syscall tax). measure is a round's figure:
// connections/s (throughput) or CPU per connection (fixed load); each
// variant's ratio is its figure over the one with nothing attached.
func floorRun(what string, hooks []string, measure func() (float64, error)) (*floorResult, error) {
	sets := [][]string{hooks}
	if hasSyscallHook(hooks) {
		var rest []string
		for _, h := range hooks {
			if !strings.HasPrefix(h, "tracepoint/syscalls/") {
				rest = append(rest, h)
			}
		}
		sets = append(sets, rest)
	}
	res := &floorResult{Variants: make([]floorVariant, len(sets))}
	for i := range sets {
		res.Variants[i].Hooks = sets[i]
	}
	for i := range *floorPairs {
		order := make([]int, 0, len(sets)+1) // -1: nothing attached
		order = append(order, -1)
		for v := range sets {
			order = append(order, v)
		}
		if i%2 == 1 {
			for a, b := 0, len(order)-1; a < b; a, b = a+1, b-1 {
				order[a], order[b] = order[b], order[a]
			}
		}
		rate := make([]float64, len(sets)+1)
		for _, v := range order {
			var err error
			if v < 0 {
				if rate[0], err = measure(); err != nil {
					return nil, fmt.Errorf("%s floor pair %d, nothing attached: %w", what, i+1, err)
				}
				continue
			}
			detach, err := attachFloor(sets[v])
			if err != nil {
				return nil, err
			}
			// Past the loads' deferred work, as the agent's rounds wait
			// past its start.
			time.Sleep(500 * time.Millisecond)
			rate[v+1], err = measure()
			detach()
			if err != nil {
				return nil, fmt.Errorf("%s floor pair %d, floor %d: %w", what, i+1, v+1, err)
			}
			// The slow syscall path ends with the last syscall
			// tracepoint's program (README, the syscall tax); a moment
			// for the threads to leave it, as after an agent stops.
			time.Sleep(500 * time.Millisecond)
		}
		line := fmt.Sprintf("%s floor pair %d: without %.1f", what, i+1, rate[0])
		for v := range sets {
			if rate[0] == 0 || rate[v+1] == 0 {
				return nil, fmt.Errorf("%s floor pair %d: a round read 0 (without %.1f, floor %d %.1f)", what, i+1, rate[0], v+1, rate[v+1])
			}
			r := rate[v+1] / rate[0]
			res.Variants[v].Ratios = append(res.Variants[v].Ratios, r)
			line += fmt.Sprintf(", floor %d %.1f ratio %.3f", v+1, rate[v+1], r)
		}
		fmt.Fprintln(os.Stderr, line)
	}
	for v := range res.Variants {
		f := &res.Variants[v]
		f.Median = median(f.Ratios)
		f.MedianCI[0], f.MedianCI[1] = bootstrapMedianCI(f.Ratios)
	}
	return res, nil
}

// printFloor says what programs that do nothing cost on the agent's hooks;
// figure names the ratio (throughput, or cost at the fixed load).
func printFloor(w io.Writer, figure string, f *floorResult) {
	for i, v := range f.Variants {
		on, what := "the agent's hooks", "the hooks' dispatch"
		if hasSyscallHook(v.Hooks) {
			what += " and the syscall tax"
		} else if i > 0 {
			on = "the agent's hooks but its syscall tracepoints"
		}
		fmt.Fprintf(w, "  %s with programs that return at once on %s (%s, no work), median of %d pairs: %.3f, 95%% CI [%.3f, %.3f]\n",
			figure, on, what, len(v.Ratios), v.Median, v.MedianCI[0], v.MedianCI[1])
	}
	if len(f.Variants) > 0 {
		fmt.Fprintf(w, "    (the agent's hooks: %s)\n", strings.Join(f.Variants[0].Hooks, ", "))
	}
	fmt.Fprintln(w)
}

func hasSyscallHook(hooks []string) bool {
	for _, h := range hooks {
		if strings.HasPrefix(h, "tracepoint/syscalls/") {
			return true
		}
	}
	return false
}
