package stream

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/listenwatch/listenwatch/events"
)

// Filter says which records a reader wants; the zero Filter takes all.
// The same filter is `listenwatch trace`'s flags and /api/v1/events'
// query parameters.
type Filter struct {
	Port  uint16     // the listener's port
	Addr  netip.Addr // the listener's or the client's address
	Netns uint32     // the listener's network namespace (inode)
	// Pod is "namespace/name" or a bare name; it needs the owner, so it is
	// applied when a record becomes an Event, not at publish time.
	Pod string
	// MinWait keeps accepted connections that waited at least this long
	// in the accept queue (those whose wait is unknown are left out);
	// drops are kept.
	MinWait   time.Duration
	DropsOnly bool
}

func (f *Filter) matchKey(k events.ListenerKey, client netip.AddrPort) bool {
	if f.Port != 0 && k.Port != f.Port {
		return false
	}
	if f.Netns != 0 && k.Netns != f.Netns {
		return false
	}
	if f.Addr.IsValid() && k.Addr != f.Addr && client.Addr() != f.Addr {
		return false
	}
	return true
}

// MatchConn says whether f takes an accepted connection.
func (f *Filter) MatchConn(c *events.Conn) bool {
	if f.DropsOnly || !f.matchKey(c.Listener, c.Client) {
		return false
	}
	if f.MinWait > 0 {
		tl := c.Timeline()
		return tl.HasQueueWait && tl.QueueWait >= f.MinWait
	}
	return true
}

// MatchDrop says whether f takes a drop record.
func (f *Filter) MatchDrop(d *events.Drop) bool {
	return f.matchKey(d.Listener, d.Client)
}

// matchListener says whether f takes a listener's summaries.
func (f *Filter) matchListener(k events.ListenerKey) bool {
	if f.Port != 0 && k.Port != f.Port {
		return false
	}
	if f.Netns != 0 && k.Netns != f.Netns {
		return false
	}
	return !f.Addr.IsValid() || k.Addr == f.Addr
}

// Query is f as /api/v1/events query parameters.
func (f Filter) Query() url.Values {
	q := url.Values{}
	if f.Port != 0 {
		q.Set("port", strconv.Itoa(int(f.Port)))
	}
	if f.Addr.IsValid() {
		q.Set("addr", f.Addr.String())
	}
	if f.Netns != 0 {
		q.Set("netns", strconv.FormatUint(uint64(f.Netns), 10))
	}
	if f.Pod != "" {
		q.Set("pod", f.Pod)
	}
	if f.MinWait > 0 {
		q.Set("min_wait", f.MinWait.String())
	}
	if f.DropsOnly {
		q.Set("drops_only", "true")
	}
	return q
}

// ParseFilter reads /api/v1/events query parameters; an unknown or
// malformed parameter is an error, never ignored.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for name, vs := range q {
		if len(vs) != 1 {
			return f, fmt.Errorf("%s: given %d times", name, len(vs))
		}
		v := vs[0]
		var err error
		switch name {
		case "port":
			var p uint64
			p, err = strconv.ParseUint(v, 10, 16)
			f.Port = uint16(p)
		case "addr":
			f.Addr, err = netip.ParseAddr(v)
			f.Addr = f.Addr.Unmap()
		case "netns":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			f.Netns = uint32(n)
		case "pod":
			f.Pod = v
		case "min_wait":
			f.MinWait, err = time.ParseDuration(v)
			if err == nil && f.MinWait < 0 {
				err = fmt.Errorf("negative")
			}
		case "drops_only":
			f.DropsOnly, err = strconv.ParseBool(v)
		default:
			return f, fmt.Errorf("unknown parameter %q (want port, addr, netns, pod, min_wait, drops_only)", name)
		}
		if err != nil {
			return f, fmt.Errorf("%s=%q: %w", name, v, err)
		}
	}
	return f, nil
}
