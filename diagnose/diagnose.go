// Package diagnose turns a listener's counters over an interval into a
// cause and the knob to turn, from the kernel's real settings. It invents
// nothing: a hint names a setting only when its value was read.
package diagnose

import (
	"fmt"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/pods"
)

// Settings are the sysctls of the listener's network namespace; a
// negative value means it could not be read.
type Settings struct {
	Somaxconn     int64 // net.core.somaxconn
	MaxSynBacklog int64 // net.ipv4.tcp_max_syn_backlog
	Syncookies    int64 // net.ipv4.tcp_syncookies
	// AbortOnOverflow is net.ipv4.tcp_abort_on_overflow (1: a full accept
	// queue resets the connection instead of ignoring the final ACK).
	AbortOnOverflow int64
}

// Process is the file-descriptor use of the listener's process; Limit < 0
// when unknown.
type Process struct {
	OpenFDs, Limit int64
	Pod            pods.Pod // the pod it runs in, when known
}

// Cause is what went wrong; Knob what to change. Both are small fixed sets
// so they can be metric labels.
type Cause string

const (
	CauseAcceptOverflow Cause = "accept_queue_overflow"
	CauseSYNQueueDrop   Cause = "syn_queue_full"
	CauseSYNCookies     Cause = "syn_cookies"
	CauseEMFILE         Cause = "accept_emfile"
	CauseENFILE         Cause = "accept_enfile"
)

// Finding is one diagnosis for one listener over one interval.
type Finding struct {
	Listener events.Listener
	Cause    Cause
	Knob     string
	Count    uint64
	Message  string
}

// restarted reports whether any counter of the listener went backwards
// between two readings: it was closed and opened again (its counters start
// from zero), so everything cur counts happened since prev was taken.
func restarted(prev, cur events.Listener) bool {
	pairs := [][2]uint64{
		{prev.SYNs, cur.SYNs}, {prev.Handshakes, cur.Handshakes}, {prev.Accepted, cur.Accepted},
		{prev.CookiesSent, cur.CookiesSent}, {prev.SynackRetrans, cur.SynackRetrans},
		{prev.AcceptEMFILE, cur.AcceptEMFILE}, {prev.AcceptENFILE, cur.AcceptENFILE},
	}
	for r := range prev.Drops {
		pairs = append(pairs, [2]uint64{prev.Drops[r], cur.Drops[r]})
	}
	for _, p := range pairs {
		if _, ok := events.Delta(p[1], p[0]); !ok {
			return true
		}
	}
	return false
}

// owner names the listener as the sentences show it: with its pod's
// namespace, name and container when they are known.
func owner(l events.Listener, p pods.Pod) string {
	switch {
	case p.Name != "" && p.Container != "":
		return fmt.Sprintf("%s (pod %s/%s container %s, pid %d %s)", l.Key, p.Namespace, p.Name, p.Container, l.PID, l.Comm)
	case p.Name != "":
		return fmt.Sprintf("%s (pod %s/%s, pid %d %s)", l.Key, p.Namespace, p.Name, l.PID, l.Comm)
	case p.UID != "":
		return fmt.Sprintf("%s (pod uid %s, pid %d %s)", l.Key, p.UID, l.PID, l.Comm)
	}
	return fmt.Sprintf("%s (pid %d %s)", l.Key, l.PID, l.Comm)
}

// Diagnose compares two readings of one listener taken interval apart.
func Diagnose(prev, cur events.Listener, interval time.Duration, s Settings, p Process) []Finding {
	if restarted(prev, cur) {
		prev = events.Listener{Key: cur.Key}
	}
	since := func(c, p uint64) uint64 { d, _ := events.Delta(c, p); return d }
	var out []Finding
	who := owner(cur, p.Pod)
	in := fmt.Sprintf("in %s", interval.Round(100*time.Millisecond))
	add := func(c Cause, knob string, n uint64, format string, args ...any) {
		out = append(out, Finding{Listener: cur, Cause: c, Knob: knob, Count: n, Message: fmt.Sprintf(format, args...)})
	}

	if n := since(cur.Overflows(), prev.Overflows()); n > 0 {
		eff := cur.Backlog
		switch {
		case cur.RequestedBacklog > 0 && s.Somaxconn >= 0 && int64(cur.RequestedBacklog) > s.Somaxconn:
			add(CauseAcceptOverflow, "net.core.somaxconn", n,
				"accept queue of %s overflowed %d times %s; effective backlog %d = min(listen() %d, net.core.somaxconn %d): raise net.core.somaxconn",
				who, n, in, eff, cur.RequestedBacklog, s.Somaxconn)
		case cur.RequestedBacklog > 0:
			add(CauseAcceptOverflow, "listen_backlog", n,
				"accept queue of %s overflowed %d times %s; effective backlog %d is what listen() asked for (net.core.somaxconn %s): raise the application's listen() backlog, or accept faster",
				who, n, in, eff, orUnknown(s.Somaxconn))
		default:
			add(CauseAcceptOverflow, "listen_backlog", n,
				"accept queue of %s overflowed %d times %s; effective backlog %d (listen() backlog unknown: the listener predates the agent; net.core.somaxconn %s): raise the listen() backlog or net.core.somaxconn, or accept faster",
				who, n, in, eff, orUnknown(s.Somaxconn))
		}
	}
	if n := since(cur.Drops[events.DropSYNQueueFull], prev.Drops[events.DropSYNQueueFull]); n > 0 {
		if s.Syncookies == 0 {
			add(CauseSYNQueueDrop, "net.ipv4.tcp_syncookies", n,
				"SYN queue of %s full %d times %s with syncookies off (net.ipv4.tcp_syncookies 0): enable net.ipv4.tcp_syncookies or raise the backlog (effective %d; net.ipv4.tcp_max_syn_backlog %s)",
				who, n, in, cur.Backlog, orUnknown(s.MaxSynBacklog))
		} else {
			add(CauseSYNQueueDrop, "listen_backlog", n,
				"SYN queue of %s full, %d SYNs dropped %s (net.ipv4.tcp_syncookies %s): raise the listen() backlog (effective %d)",
				who, n, in, orUnknown(s.Syncookies), cur.Backlog)
		}
	}
	if n := since(cur.CookiesSent, prev.CookiesSent); n > 0 {
		add(CauseSYNCookies, "listen_backlog", n,
			"SYN queue of %s full: %d SYN cookies sent %s (connections lose TCP options): a SYN flood, or raise the listen() backlog (effective %d)",
			who, n, in, cur.Backlog)
	}
	if n := since(cur.AcceptEMFILE, prev.AcceptEMFILE); n > 0 {
		fds := "fd use unknown"
		if p.Limit >= 0 {
			fds = fmt.Sprintf("pid %d has %d/%d fds", cur.PID, p.OpenFDs, p.Limit)
		}
		add(CauseEMFILE, "RLIMIT_NOFILE", n,
			"accept() on %s failed with EMFILE %d times %s; %s: raise RLIMIT_NOFILE (ulimit -n, LimitNOFILE=) or find the fd leak",
			who, n, in, fds)
	}
	if n := since(cur.AcceptENFILE, prev.AcceptENFILE); n > 0 {
		add(CauseENFILE, "fs.file-max", n,
			"accept() on %s failed with ENFILE %d times %s: the system is out of file handles: raise fs.file-max",
			who, n, in)
	}
	return out
}

func orUnknown(v int64) string {
	if v < 0 {
		return "unknown"
	}
	return fmt.Sprint(v)
}
