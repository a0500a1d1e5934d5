package events

import (
	"fmt"
	"strings"
	"time"
)

// Mode is how a stage is attached to the kernel.
type Mode string

const (
	ModeAuto       Mode = "auto"       // best that loads: fentry, kprobe, tracepoint
	ModeFentry     Mode = "fentry"     // fentry/fexit (BPF trampolines)
	ModeKprobe     Mode = "kprobe"     // kprobe/kretprobe
	ModeTracepoint Mode = "tracepoint" // tp_btf and syscall tracepoints only
	ModeNone       Mode = "none"       // not attached
)

// Modes a user can ask for, in order of preference after auto.
var Modes = []Mode{ModeAuto, ModeFentry, ModeKprobe, ModeTracepoint}

// ParseMode accepts the values of --hook-mode.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown hook mode %q (want %s)", s, orList(Modes))
}

// ModesNames lists the modes a user may ask for, for help texts.
func ModesNames() string { return orList(Modes) }

// Stage is a step of a connection's life that listenwatch hooks.
type Stage string

const (
	StageRegistry     Stage = "registry"      // listen() and close() of listeners
	StageSYN          Stage = "syn"           // a SYN reaches a listener (and SYN-time drops)
	StageHandshake    Stage = "handshake"     // the final ACK creates the child socket
	StageAccept       Stage = "accept"        // accept() returns the child
	StageAcceptErrors Stage = "accept_errors" // accept() fails with EMFILE/ENFILE
	StageDrops        Stage = "drops"         // final-ACK and cookie-ACK listen overflows
	StageSynackRetx   Stage = "synack_retransmit"
)

// OptionalStages are the stages a user may disable; the registry is not
// one of them (without it nothing is attributed).
var OptionalStages = []Stage{StageSYN, StageHandshake, StageAccept, StageAcceptErrors, StageDrops, StageSynackRetx}

// ParseStage accepts the values of --disable-stage.
func ParseStage(s string) (Stage, error) {
	for _, st := range OptionalStages {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("unknown stage %q (want %s)", s, orList(OptionalStages))
}

// StageNames lists the stages a user may name, for help texts.
func StageNames() string { return orList(OptionalStages) }

func orList[T ~string](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = string(v)
	}
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// Hook says how one stage runs on this kernel.
type Hook struct {
	Stage    Stage
	Mode     Mode     // ModeNone when not attached
	Programs []string // BPF programs attached for it
	Err      error    // why it is not attached, or why better modes were not used
	// NodeCost is what this mode costs beyond its programs' own run time,
	// paid by every task on the node (empty: nothing measurable).
	NodeCost string
}

// ProgramStats is the kernel's accounting of one attached program.
type ProgramStats struct {
	Name            string
	Stage           Stage
	RecursionMisses uint64        // runs skipped because the program was already running on that CPU
	RunTime         time.Duration // with kernel.bpf_stats_enabled=1 only
	RunCount        uint64        // with kernel.bpf_stats_enabled=1 only
}
