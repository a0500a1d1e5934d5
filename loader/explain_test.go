package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/events"
)

func TestExplain(t *testing.T) {
	// What cilium/ebpf returns on this CI kernel for fentry: EPERM with a
	// MEMLOCK hint that is not the cause.
	eperm := fmt.Errorf("load program: %w (MEMLOCK may be too low, consider rlimit.RemoveMemlock)", os.ErrPermission)
	noKprobeEvents := fmt.Errorf("creating probe entry on tracefs: open /sys/kernel/tracing/kprobe_events: %w", os.ErrNotExist)
	root := hostFacts{root: true, kprobeEvents: true}
	for _, c := range []struct {
		mode events.Mode
		err  error
		h    hostFacts
		want string
	}{
		{events.ModeFentry, eperm, root, "fentry/fexit refused by this kernel even for root"},
		{events.ModeFentry, eperm, hostFacts{}, "not permitted: run as root"},
		{events.ModeTracepoint, eperm, root, "refused by this kernel's verifier even for root"},
		{events.ModeKprobe, noKprobeEvents, hostFacts{root: true}, "kprobes are not configured in this kernel"},
		{events.ModeKprobe, fmt.Errorf("symbol tcp_conn_request: %w", os.ErrNotExist), root, "does not exist in this kernel"},
		{events.ModeTracepoint, fmt.Errorf("tracepoint: %w", ebpf.ErrNotSupported), root, "not supported by this kernel"},
		{events.ModeTracepoint, errors.New("odd"), root, "tracepoint: odd"},
	} {
		got := explain(c.mode, c.err, c.h)
		if !strings.Contains(got, c.want) || strings.Contains(got, "MEMLOCK") || strings.Contains(got, "\n") {
			t.Errorf("explain(%s, %v) = %q, want one line with %q", c.mode, c.err, got, c.want)
		}
	}
}
