package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var (
	syscallPairs  = flag.Int("syscall-pairs", 6, "syscall-tax rounds of each variant (no agent, agent, agent without the accept stages), in A B C C B A order (0: skip)")
	syscallCalls  = flag.Int("syscall-calls", 2_000_000, "getppid calls per syscall-tax round")
	syscallProbeN = flag.Int("syscall-probe", 0, "internal: print ns per syscall over this many calls and exit (the syscall tax runs it in a new process)")
)

// syscallVariant is one way the machine runs during a syscall-tax round.
type syscallVariant struct {
	Name  string
	Agent bool
	Flags []string // added to the agent's flags
}

// The tax every task on the node pays: a tracepoint on a syscall (the
// accept stage's sys_exit_accept4 in tracepoint mode) sets
// SYSCALL_WORK_SYSCALL_TRACEPOINT on every thread, so every syscall of every
// process takes the slow entry/exit path while it is attached, not only
// accept4. The third variant tells that part from the rest of the agent.
var syscallVariants = []syscallVariant{
	{Name: "no agent"},
	{Name: "agent", Agent: true},
	{Name: "agent, no accept stages", Agent: true, Flags: []string{"--disable-stage", "accept,accept_errors"}},
}

type syscallTax struct {
	Variants []string    `json:"variants"`
	Rounds   [][]float64 `json:"ns_per_syscall_rounds"` // [variant][pair]
	Median   []float64   `json:"ns_per_syscall_median"`
	// Extra[v]: variant v minus "no agent", per pair: median and 95% CI.
	Extra   []float64    `json:"extra_ns_median"`
	ExtraCI [][2]float64 `json:"extra_ns_ci95"`
}

// nsPerSyscall times n getppid calls (no work in the kernel beyond the
// entry and exit paths) on one locked thread, in batches, and returns the
// fastest batch's ns per call: the machine's noise only ever adds time.
func nsPerSyscall(n int) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const batches = 10
	per := n / batches
	best := 0.0
	for range batches {
		t0 := time.Now()
		for range per {
			unix.Getppid()
		}
		ns := float64(time.Since(t0).Nanoseconds()) / float64(per)
		if best == 0 || ns < best {
			best = ns
		}
	}
	return best
}

// syscallProbe runs nsPerSyscall in a new process (this binary with
// -syscall-probe): in the bench's own process, whose threads have been
// through network namespaces and many agent rounds, rounds without the
// agent read either ~195 or ~260 ns at random; new processes read 190-193
// ns in most rounds.
func syscallProbe(n int) (float64, error) {
	out, err := exec.Command("/proc/self/exe", "-syscall-probe", strconv.Itoa(n)).Output()
	if err != nil {
		return 0, fmt.Errorf("syscall probe: %w", err)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("syscall probe printed %q", out)
	}
	return v, nil
}

// runSyscallTax measures ns per syscall with each variant, rounds in
// A B C C B A order so that drift falls on all alike.
func runSyscallTax() (*syscallTax, error) {
	if *syscallCalls < 10 {
		return nil, errors.New("-syscall-calls must be at least 10")
	}
	t := &syscallTax{Rounds: make([][]float64, len(syscallVariants))}
	for _, v := range syscallVariants {
		t.Variants = append(t.Variants, v.Name)
	}
	for i := range *syscallPairs {
		order := make([]int, len(syscallVariants))
		for j := range order {
			order[j] = j
			if i%2 == 1 {
				order[j] = len(order) - 1 - j
			}
		}
		for _, vi := range order {
			v := syscallVariants[vi]
			var ag *agent
			if v.Agent {
				var err error
				if ag, err = startAgentBin(*agentBin, v.Flags...); err != nil {
					return nil, fmt.Errorf("syscall tax, %s: %w", v.Name, err)
				}
			}
			ns, err := syscallProbe(*syscallCalls)
			if ag != nil {
				ag.stop()
				// As after the fixed-load rounds: the kernel tears the
				// agent's programs down after it exits (RCU, kworkers),
				// not the next round's to pay.
				time.Sleep(2 * time.Second)
			}
			if err != nil {
				return nil, err
			}
			t.Rounds[vi] = append(t.Rounds[vi], ns)
		}
		fmt.Fprintf(os.Stderr, "syscall pair %d:", i+1)
		for vi, v := range syscallVariants {
			fmt.Fprintf(os.Stderr, " %s %.1f ns", v.Name, t.Rounds[vi][i])
		}
		fmt.Fprintln(os.Stderr)
	}
	t.summarize()
	return t, nil
}

// summarize fills the medians and, per variant, the extra ns over the
// first variant (no agent) paired round by round.
func (t *syscallTax) summarize() {
	t.Median, t.Extra, t.ExtraCI = nil, nil, nil
	for vi := range t.Rounds {
		t.Median = append(t.Median, median(t.Rounds[vi]))
		extra := make([]float64, len(t.Rounds[vi]))
		for i := range extra {
			extra[i] = t.Rounds[vi][i] - t.Rounds[0][i]
		}
		lo, hi := bootstrapMedianCI(extra)
		t.Extra = append(t.Extra, median(extra))
		t.ExtraCI = append(t.ExtraCI, [2]float64{lo, hi})
	}
}

func printSyscallTax(w io.Writer, t *syscallTax) {
	fmt.Fprintf(w, "every syscall of every task: ns per getppid, fastest of 10 batches, %d rounds each\n", len(t.Rounds[0]))
	fmt.Fprintf(w, "%-26s %10s %22s\n", "variant", "ns/call", "extra vs no agent (CI)")
	for vi, name := range t.Variants {
		if vi == 0 {
			fmt.Fprintf(w, "%-26s %10.1f\n", name, t.Median[vi])
			continue
		}
		fmt.Fprintf(w, "%-26s %10.1f %+9.1f [%+.1f, %+.1f]\n", name, t.Median[vi], t.Extra[vi], t.ExtraCI[vi][0], t.ExtraCI[vi][1])
	}
	fmt.Fprintln(w)
}
