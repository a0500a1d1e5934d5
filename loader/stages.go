package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/rs/zerolog"
)

// stageDef is one stage: the modes it can run in, in order of preference,
// and what it needs from the stages attached before it.
type stageDef struct {
	stage events.Stage
	// after names the stages whose chosen mode this stage's programs read
	// (through the constants consts sets): they are attached first.
	after []events.Stage
	// consts sets the BPF constants that depend on those modes.
	consts func(modeOf func(events.Stage) events.Mode) map[string]any
	// coveredBy reports the stage already served by another's programs.
	coveredBy func(modeOf func(events.Stage) events.Mode) (events.Stage, bool)
	// auxiliary stages have one tracepoint attachment on every kernel: a
	// forced mode does not apply to them, and a kernel without their
	// tracepoint does not fail the start.
	auxiliary  bool
	candidates []candidate
}

// probe is one program and how to attach it.
type probe struct {
	prog   string
	attach func(*ebpf.Program) (link.Link, error)
	// only, when set, says whether the program is needed, given the
	// modes of the stages attached before.
	only func(modeOf func(events.Stage) events.Mode) bool
}

type candidate struct {
	mode   events.Mode
	probes []probe
	// nodeCost: see events.Hook.NodeCost.
	nodeCost string
	// prepare sets the variables a mode needs before its programs load.
	prepare func(*ebpf.CollectionSpec, procfs.FS) error
}

func tracing(p *ebpf.Program) (link.Link, error) {
	return link.AttachTracing(link.TracingOptions{Program: p})
}

func kprobe(sym string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Kprobe(sym, p, nil) }
}

func kretprobe(sym string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Kretprobe(sym, p, nil) }
}

// blockingRetprobes is how many calls of a function that sleeps (accept()
// waiting for a connection) a return probe follows at once. Each call in
// the function holds one of the probe's instances until it returns; the
// kernel's default, max(10, 2 x CPUs), is taken by the threads of a few
// servers blocked in accept(), and every return past it is missed without
// a trace (TestAcceptEMFILE, with 24 threads waiting in accept() beside
// its server, counted none of its EMFILE failures in the 6.1 kprobe guest).
// 4096 is the most the kernel takes (KRETPROBE_MAXACTIVE_MAX); their
// memory was not measured.
const blockingRetprobes = 4096

// kretprobeBlocking is kretprobe for a function that may sleep. The
// instance count needs the tracefs interface (the perf one has no field
// for it), which kprobe mode's check already requires.
func kretprobeBlocking(sym string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) {
		l, err := link.Kretprobe(sym, p, &link.KprobeOptions{RetprobeMaxActive: blockingRetprobes})
		if err != nil {
			return nil, fmt.Errorf("return probe on %s for %d concurrent calls: %w", sym, blockingRetprobes, err)
		}
		return l, nil
	}
}

func tracepoint(group, name string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint(group, name, p, nil) }
}

// acceptSyscallsCost: a program on a syscall tracepoint makes the kernel
// set SYSCALL_WORK_SYSCALL_TRACEPOINT on every thread (syscall_regfunc), so
// every syscall of every task takes the slow entry and exit path while it
// is attached, not only accept. Measured by `make bench` (syscall tax).
const acceptSyscallsCost = "every syscall of every task takes the kernel's slow syscall path while a syscall tracepoint is attached (measured on the 6.18 test VM: getppid 191 -> 254 ns, and a Go server that accepts and closes keeps ~94% of its maximum rate with programs that do nothing on these hooks; README, Performance); --disable-stage accept,accept_errors avoids it, losing accept counts, queue waits and timelines"

// acceptSyscalls see accept(2) and accept4(2) return: failures always,
// accepted connections when cfg_tp_accept is set.
var acceptSyscalls = []probe{
	{prog: bpfProgLwTpAccept4, attach: tracepoint("syscalls", "sys_exit_accept4")},
	{prog: bpfProgLwTpAccept, attach: tracepoint("syscalls", "sys_exit_accept")},
}

// discardProbe claims the discard of a final ACK that overflowed, where
// the handshake programs count those overflows (no kfree_skb rx_sk: the
// drops stage is not attached). See ack_overflow in the BPF code.
var discardProbe = probe{prog: bpfProgLwTpDiscard, attach: tracing, only: func(modeOf func(events.Stage) events.Mode) bool {
	return modeOf(events.StageDrops) == events.ModeNone
}}

// prepareDiscard gives lw_tp_discard and ack_overflow the address ranges
// of tcp_v4_rcv and tcp_v6_rcv, where an overflowing final ACK is
// discarded. Without them (kallsyms unreadable) ack_overflow claims the
// discard at once, as it did before lw_tp_discard: exact but for a SYN
// refused on another CPU in the microseconds between.
func prepareDiscard(spec *ebpf.CollectionSpec, proc procfs.FS) error {
	if err := prepareKfree(spec, proc); err != nil {
		for _, name := range []string{bpfVarCfgRcv4Lo, bpfVarCfgRcv4Hi, bpfVarCfgRcv6Lo, bpfVarCfgRcv6Hi} {
			if err := spec.Variables[name].Set(uint64(0)); err != nil {
				return err
			}
		}
	}
	return nil
}

// stageDefs lists every stage. The order here is only the order of the
// log lines: dependencies are stated in each definition.
var stageDefs = []stageDef{
	{
		stage: events.StageSYN,
		candidates: []candidate{
			{mode: events.ModeFentry, probes: []probe{{prog: bpfProgLwFexitConnRequest, attach: tracing}}},
			{mode: events.ModeKprobe, probes: []probe{
				{prog: bpfProgLwKpConnRequest, attach: kprobe("tcp_conn_request")},
				{prog: bpfProgLwKrpConnRequest, attach: kretprobe("tcp_conn_request")},
			}},
			{mode: events.ModeTracepoint, probes: []probe{{prog: bpfProgLwTpConsume, attach: tracing}}, prepare: prepareConsume},
		},
	},
	{
		stage: events.StageHandshake,
		// Without the kfree_skb hook, the handshake programs count the
		// final-ACK overflows themselves; without the accept stage they
		// keep no timeline for it.
		after: []events.Stage{events.StageDrops, events.StageAccept},
		consts: func(modeOf func(events.Stage) events.Mode) map[string]any {
			return map[string]any{
				bpfVarCfgKfreeDrops: modeOf(events.StageDrops) != events.ModeNone,
				bpfVarCfgJoin:       modeOf(events.StageAccept) != events.ModeNone,
			}
		},
		candidates: []candidate{
			{mode: events.ModeFentry, probes: []probe{
				{prog: bpfProgLwFexitSynRecv4, attach: tracing},
				{prog: bpfProgLwFexitSynRecv6, attach: tracing},
				discardProbe,
			}, prepare: prepareDiscard},
			{mode: events.ModeKprobe, probes: []probe{
				{prog: bpfProgLwKpSynRecv4, attach: kprobe("tcp_v4_syn_recv_sock")},
				{prog: bpfProgLwKrpSynRecv4, attach: kretprobe("tcp_v4_syn_recv_sock")},
				{prog: bpfProgLwKpSynRecv6, attach: kprobe("tcp_v6_syn_recv_sock")},
				{prog: bpfProgLwKrpSynRecv6, attach: kretprobe("tcp_v6_syn_recv_sock")},
				discardProbe,
			}, prepare: prepareDiscard},
			// Runs inside the registry program (inet_sock_set_state
			// SYN_RECV -> ESTABLISHED), switched on by cfg_tp_handshake.
			{mode: events.ModeTracepoint},
		},
	},
	{
		stage: events.StageAccept,
		candidates: []candidate{
			{mode: events.ModeFentry, probes: []probe{{prog: bpfProgLwFexitAccept, attach: tracing}}},
			// Where a softirq cannot interrupt it (see lw_kp_graft); the
			// pair on inet_csk_accept where the kernel has no such
			// function (built without CONFIG_SECURITY).
			{mode: events.ModeKprobe, probes: []probe{{prog: bpfProgLwKpGraft, attach: kprobe("security_sock_graft")}}},
			{mode: events.ModeKprobe, probes: []probe{
				{prog: bpfProgLwKpAccept, attach: kprobe("inet_csk_accept")},
				{prog: bpfProgLwKrpAccept, attach: kretprobeBlocking("inet_csk_accept")},
			}},
			// The same syscall programs as accept_errors, with the
			// accepted-connection path switched on.
			{mode: events.ModeTracepoint, probes: acceptSyscalls, prepare: setConst(bpfVarCfgTpAccept, true), nodeCost: acceptSyscallsCost},
		},
	},
	{
		stage: events.StageAcceptErrors,
		after: []events.Stage{events.StageAccept},
		// The accept stage's syscall programs count failures too.
		coveredBy: func(modeOf func(events.Stage) events.Mode) (events.Stage, bool) {
			return events.StageAccept, modeOf(events.StageAccept) == events.ModeTracepoint
		},
		// Its own hook where fentry or kprobes work: a syscall
		// tracepoint slows every syscall on the node (acceptSyscallsCost).
		candidates: []candidate{
			{mode: events.ModeFentry, probes: []probe{{prog: bpfProgLwFexitAcceptErr, attach: tracing}}},
			{mode: events.ModeKprobe, probes: []probe{{prog: bpfProgLwKrpAcceptErr, attach: kretprobeBlocking("__sys_accept4")}}},
			{mode: events.ModeTracepoint, probes: acceptSyscalls, prepare: setConst(bpfVarCfgTpAccept, false), nodeCost: acceptSyscallsCost},
		},
	},
	{
		stage:      events.StageDrops,
		auxiliary:  true,
		candidates: []candidate{{mode: events.ModeTracepoint, probes: []probe{{prog: bpfProgLwTpKfree, attach: tracing}}, prepare: prepareKfree}},
	},
	{
		stage:      events.StageSynackRetx,
		auxiliary:  true,
		candidates: []candidate{{mode: events.ModeTracepoint, probes: []probe{{prog: bpfProgLwTpSynack, attach: tracing}}}},
	},
	{
		stage: events.StageRegistry,
		// The tracepoint handshake lives in the registry's program.
		after: []events.Stage{events.StageHandshake, events.StageAccept},
		consts: func(modeOf func(events.Stage) events.Mode) map[string]any {
			return map[string]any{
				bpfVarCfgTpHandshake: modeOf(events.StageHandshake) == events.ModeTracepoint,
				bpfVarCfgJoin:        modeOf(events.StageAccept) != events.ModeNone,
			}
		},
		candidates: []candidate{{mode: events.ModeTracepoint, probes: []probe{{prog: bpfProgLwTpState, attach: tracing}}}},
	},
}

// attachOrder sorts the stages so that each comes after the stages it
// depends on, keeping the listed order otherwise.
func attachOrder(defs []stageDef) ([]stageDef, error) {
	byStage := make(map[events.Stage]stageDef, len(defs))
	for _, d := range defs {
		byStage[d.stage] = d
	}
	var (
		out   []stageDef
		state = map[events.Stage]int{} // 1 visiting, 2 done
		visit func(d stageDef) error
	)
	visit = func(d stageDef) error {
		switch state[d.stage] {
		case 1:
			return fmt.Errorf("stage %s depends on itself", d.stage)
		case 2:
			return nil
		}
		state[d.stage] = 1
		for _, dep := range d.after {
			dd, ok := byStage[dep]
			if !ok {
				return fmt.Errorf("stage %s depends on unknown stage %s", d.stage, dep)
			}
			if err := visit(dd); err != nil {
				return err
			}
		}
		state[d.stage] = 2
		out = append(out, d)
		return nil
	}
	for _, d := range defs {
		if err := visit(d); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// onFailure decides what a stage that did not attach means: fatal (Open
// fails) or logged at a level. The registry is always needed; a stage
// the user forced into a mode must run in it; an auxiliary stage is a
// kernel too old for its tracepoint; a disabled stage is what was asked.
func onFailure(d stageDef, cfg Config) (fatal bool, level zerolog.Level) {
	switch {
	case d.stage == events.StageRegistry:
		return true, zerolog.ErrorLevel
	case cfg.disabled(d.stage):
		return false, zerolog.InfoLevel
	case d.auxiliary:
		return false, zerolog.WarnLevel
	case cfg.Mode != events.ModeAuto:
		return true, zerolog.ErrorLevel
	}
	return false, zerolog.ErrorLevel
}

// forcedModeApplies says whether a forced --hook-mode restricts this
// stage's candidates.
func forcedModeApplies(d stageDef, cfg Config) bool {
	return cfg.Mode != events.ModeAuto && d.stage != events.StageRegistry && !d.auxiliary
}

func setConst(name string, v any) func(*ebpf.CollectionSpec, procfs.FS) error {
	return func(spec *ebpf.CollectionSpec, _ procfs.FS) error { return spec.Variables[name].Set(v) }
}

// prepareKfree gives lw_tp_kfree the code of tcp_v4_rcv and tcp_v6_rcv:
// a packet freed there was added to the listener's sk_drops by the
// discard, one freed elsewhere was not (drops.bpf.h). tcp_v6_rcv is
// optional: a kernel built without IPv6 has none.
func prepareKfree(spec *ebpf.CollectionSpec, proc procfs.FS) error {
	lo, hi, err := symbolRange(proc.Path("kallsyms"), "tcp_v4_rcv")
	if err != nil {
		return err
	}
	v6lo, v6hi, err := symbolRange(proc.Path("kallsyms"), "tcp_v6_rcv")
	if errors.Is(err, errNoSymbol) {
		v6lo, v6hi, err = 0, 0, nil
	}
	if err != nil {
		return err
	}
	for name, v := range map[string]uint64{bpfVarCfgRcv4Lo: lo, bpfVarCfgRcv4Hi: hi, bpfVarCfgRcv6Lo: v6lo, bpfVarCfgRcv6Hi: v6hi} {
		if err := spec.Variables[name].Set(v); err != nil {
			return err
		}
	}
	return nil
}

// prepareConsume gives lw_tp_consume the address range of
// tcp_rcv_state_process: only consume_skb calls from there are listener SYNs.
func prepareConsume(spec *ebpf.CollectionSpec, proc procfs.FS) error {
	lo, hi, err := symbolRange(proc.Path("kallsyms"), "tcp_rcv_state_process")
	if err != nil {
		return err
	}
	if err := spec.Variables[bpfVarCfgRspLo].Set(lo); err != nil {
		return err
	}
	return spec.Variables[bpfVarCfgRspHi].Set(hi)
}
