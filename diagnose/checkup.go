package diagnose

import (
	"fmt"
	"sort"

	"github.com/listenwatch/listenwatch/events"
)

// Risk is a listener at risk now, found by Checkup: not a drop that
// happened (that is a Finding) but a setting or a state that will cause
// one. Kind and Knob are small fixed sets.
type Risk struct {
	Listener events.ListenerKey `json:"-"`
	Kind     string             `json:"kind"`
	Knob     string             `json:"knob"`
	Message  string             `json:"message"`
}

// The kinds of risk.
const (
	RiskBacklogCapped = "backlog_capped_by_somaxconn"
	RiskQueueHalfFull = "accept_queue_above_half"
	RiskFDsNearLimit  = "owner_fds_above_80_percent"
)

// Checkup looks at listeners as they are now, with their namespaces'
// settings and their owners' fd use (by pid; missing: unknown), and
// returns what is at risk, worst first by kind. Pure: the caller reads the
// kernel.
func Checkup(ls []events.Listener, settings map[uint32]Settings, procs map[uint32]Process, names map[uint32]string) []Risk {
	var out []Risk
	for _, l := range ls {
		if l.Sockets <= 0 {
			continue // closed
		}
		who := fmt.Sprintf("%s (pid %d %s)", l.Key, l.PID, l.Comm)
		if n := names[l.PID]; n != "" {
			who = fmt.Sprintf("%s (%s, pid %d %s)", l.Key, n, l.PID, l.Comm)
		}
		s, ok := settings[l.Key.Netns]
		if ok && s.Somaxconn > 0 && l.Backlog > 0 {
			switch {
			case l.RequestedBacklog > 0 && l.RequestedBacklog > l.Backlog:
				out = append(out, Risk{l.Key, RiskBacklogCapped, "net.core.somaxconn", fmt.Sprintf(
					"%s: listen() asked for a backlog of %d but net.core.somaxconn %d caps it at %d: raise net.core.somaxconn in netns %d",
					who, l.RequestedBacklog, s.Somaxconn, l.Backlog, l.Key.Netns)})
			case l.RequestedBacklog == 0 && int64(l.Backlog) == s.Somaxconn:
				// Started before the agent: what listen() asked for is not
				// known, but a backlog equal to the cap was most likely cut.
				out = append(out, Risk{l.Key, RiskBacklogCapped, "net.core.somaxconn", fmt.Sprintf(
					"%s: effective backlog %d equals net.core.somaxconn: listen() probably asked for more; raise net.core.somaxconn in netns %d",
					who, l.Backlog, l.Key.Netns)})
			}
		}
		if l.Backlog > 0 && 2*uint64(l.AcceptQueueLen) > uint64(l.Backlog) {
			out = append(out, Risk{l.Key, RiskQueueHalfFull, "listen_backlog", fmt.Sprintf(
				"%s: accept queue %d of %d, above half: the application accepts too slowly (or raise its listen() backlog)",
				who, l.AcceptQueueLen, l.Backlog)})
		}
		if p, ok := procs[l.PID]; ok && p.Limit > 0 && p.OpenFDs >= 0 && 5*p.OpenFDs > 4*p.Limit {
			out = append(out, Risk{l.Key, RiskFDsNearLimit, "RLIMIT_NOFILE", fmt.Sprintf(
				"%s: %d of %d file descriptors open (above 80%%): accept() fails with EMFILE at the limit; raise RLIMIT_NOFILE (LimitNOFILE=, ulimit -n) or find the fd leak",
				who, p.OpenFDs, p.Limit)})
		}
	}
	rank := map[string]int{RiskFDsNearLimit: 0, RiskQueueHalfFull: 1, RiskBacklogCapped: 2}
	sort.SliceStable(out, func(i, j int) bool { return rank[out[i].Kind] < rank[out[j].Kind] })
	return out
}
