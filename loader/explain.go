package loader

import (
	"errors"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/events"
)

// hostFacts are what explain needs to know of the host, read once.
type hostFacts struct {
	root         bool // effective uid 0
	kprobeEvents bool // tracefs offers kprobe_events (CONFIG_KPROBE_EVENTS)
}

func readHostFacts() hostFacts {
	_, err := os.Stat(tracefsPath + "/kprobe_events")
	return hostFacts{root: os.Geteuid() == 0, kprobeEvents: err == nil}
}

// explain says in plain words why a mode did not attach, for the one log
// line per stage. The library's own message can mislead (an EPERM on load
// comes with a hint about RLIMIT_MEMLOCK, which is not the cause on a
// kernel that refuses trampolines); the raw error is logged at debug level.
func explain(mode events.Mode, err error, h hostFacts) string {
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return string(mode) + " is not supported by this kernel"
	case mode == events.ModeFentry && errors.Is(err, os.ErrPermission) && h.root:
		return "fentry/fexit refused by this kernel even for root (BPF trampolines not permitted: lockdown, or built without direct-call ftrace)"
	case errors.Is(err, os.ErrPermission) && h.root:
		// Root with the capabilities checked at start: not a privilege
		// problem, the verifier refused what the program reads (on 6.1,
		// kfree_skb's rx_sk, added in 6.11).
		return string(mode) + " program refused by this kernel's verifier even for root (a field or argument it reads does not exist here; details at debug level)"
	case errors.Is(err, os.ErrPermission):
		return string(mode) + " not permitted: " + privilegeAdvice
	case mode == events.ModeKprobe && !h.kprobeEvents:
		return "kprobes are not configured in this kernel (no kprobe_events in tracefs)"
	case mode == events.ModeKprobe && errors.Is(err, os.ErrNotExist):
		return "the kernel function to probe does not exist in this kernel (renamed or inlined)"
	case mode == events.ModeTracepoint && errors.Is(err, os.ErrNotExist):
		return "this kernel has no such tracepoint, or tracefs is not mounted"
	case strings.Contains(err.Error(), "tcp_rcv_state_process"):
		return "cannot place the SYN hook: " + err.Error()
	}
	return string(mode) + ": " + err.Error()
}
