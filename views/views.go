// Package views is what the on-call commands show: a versioned snapshot of
// every listener (the agent serves it as JSON at /api/v1/listeners), and
// the rates between two snapshots (`listenwatch top`). Building a
// snapshot reads the kernel through small interfaces; computing rates and
// quantiles is pure.
package views

import (
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/pods"
)

// APIVersion is the version of the JSON the agent serves: dashboards and
// scripts depend on it, so fields are only ever added within a version.
const APIVersion = "v1"

// Latency is one histogram: counts per bucket (not cumulative), the last
// one above the last bound (+Inf).
type Latency struct {
	Bounds []float64 `json:"bounds_seconds"`
	Counts []uint64  `json:"counts"`
	Sum    float64   `json:"sum_seconds"`
}

// Owner is who owns a listener: the process and, in Kubernetes, its pod.
type Owner struct {
	PID       uint32 `json:"pid"`
	Comm      string `json:"comm"`
	PodUID    string `json:"pod_uid,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
}

// String is how tables show an owner: namespace/pod when known, else
// comm[pid].
func (o Owner) String() string {
	if o.Pod != "" {
		return o.Namespace + "/" + o.Pod
	}
	if o.PID == 0 && o.Comm == "" {
		return "?" // predates the agent, owner not found
	}
	return o.Comm + "[" + strconv.FormatUint(uint64(o.PID), 10) + "]"
}

// Listener is one listener's cumulative state. Counters only grow while
// the listener lives; a restarted listener starts again from zero.
type Listener struct {
	Netns            uint32            `json:"netns"`
	Addr             string            `json:"addr"`
	Port             uint16            `json:"port"`
	Owner            Owner             `json:"owner"`
	Sockets          int64             `json:"sockets"`
	Backlog          uint32            `json:"backlog"`           // effective: min(listen(), somaxconn)
	RequestedBacklog uint32            `json:"requested_backlog"` // what listen() asked (0: unknown)
	AcceptQueue      uint32            `json:"accept_queue"`      // at the last SYN
	SYNQueue         uint32            `json:"syn_queue"`         // at the last SYN
	SYNs             uint64            `json:"syns"`
	Handshakes       uint64            `json:"handshakes"`
	Accepted         uint64            `json:"accepted"`
	Drops            map[string]uint64 `json:"drops"` // by reason (listenwatch_listener_drops_total's)
	CookiesSent      uint64            `json:"syncookies_sent"`
	SynackRetrans    uint64            `json:"synack_retransmits"`
	AcceptEMFILE     uint64            `json:"accept_emfile"`
	AcceptENFILE     uint64            `json:"accept_enfile"`
	SYNToAccept      *Latency          `json:"syn_to_accept,omitempty"`
}

// Key is the listener's identity.
func (l *Listener) Key() string {
	return strconv.FormatUint(uint64(l.Netns), 10) + "/" + l.Addr + ":" + strconv.Itoa(int(l.Port))
}

// Stage is the attach mode of one stage.
type Stage struct {
	Stage string `json:"stage"`
	Mode  string `json:"mode"`
}

// Snapshot is every listener at one moment.
type Snapshot struct {
	APIVersion string     `json:"api_version"`
	Time       time.Time  `json:"time"`
	Stages     []Stage    `json:"stages"`
	LostEvents uint64     `json:"lost_events"`
	Listeners  []Listener `json:"listeners"`
}

// Source is what a snapshot reads (the loader's Tracer is one).
type Source interface {
	Listeners() ([]events.Listener, error)
	Counters() (events.Counters, error)
	Hooks() []events.Hook
}

// Latencies gives a listener's SYN -> accept histogram (the exporter's).
type Latencies interface {
	SYNToAccept(k events.ListenerKey) (bounds []float64, counts []uint64, sum float64, ok bool)
}

// Owners names a listener's owner.
type Owners interface {
	Owner(l *events.Listener) Owner
}

// Build reads a snapshot now.
func Build(src Source, lat Latencies, owners Owners, now time.Time) (Snapshot, error) {
	ls, err := src.Listeners()
	if err != nil {
		return Snapshot{}, err
	}
	s := Snapshot{APIVersion: APIVersion, Time: now, Listeners: make([]Listener, 0, len(ls))}
	for _, h := range src.Hooks() {
		s.Stages = append(s.Stages, Stage{Stage: string(h.Stage), Mode: string(h.Mode)})
	}
	if cs, err := src.Counters(); err == nil {
		s.LostEvents = cs.RingbufLost
	}
	for i := range ls {
		l := &ls[i]
		v := Listener{
			Netns: l.Key.Netns, Addr: l.Key.Addr.String(), Port: l.Key.Port, Owner: owners.Owner(l),
			Sockets: l.Sockets, Backlog: l.Backlog, RequestedBacklog: l.RequestedBacklog,
			AcceptQueue: l.AcceptQueueLen, SYNQueue: l.SYNQueueLen,
			SYNs: l.SYNs, Handshakes: l.Handshakes, Accepted: l.Accepted,
			Drops:       make(map[string]uint64, events.DropReasons),
			CookiesSent: l.CookiesSent, SynackRetrans: l.SynackRetrans,
			AcceptEMFILE: l.AcceptEMFILE, AcceptENFILE: l.AcceptENFILE,
		}
		for r, n := range l.Drops {
			v.Drops[events.DropReason(r).String()] = n
		}
		if b, c, sum, ok := lat.SYNToAccept(l.Key); ok {
			v.SYNToAccept = &Latency{Bounds: b, Counts: c, Sum: sum}
		}
		s.Listeners = append(s.Listeners, v)
	}
	return s, nil
}

// ProcessOwners names owners from /proc and the pod resolver.
type ProcessOwners struct {
	Comm func(pid uint32) string
	Pods *pods.Names
}

// Owner implements Owners.
func (p ProcessOwners) Owner(l *events.Listener) Owner {
	o := Owner{PID: l.PID, Comm: l.Comm}
	if c := p.Comm(l.PID); c != "" {
		o.Comm = c
	}
	pod := p.Pods.Of(l.PID)
	if pod.UID == "" {
		pod = p.Pods.OfNetns(l.Key.Netns)
	}
	o.PodUID, o.Namespace, o.Pod, o.Container = pod.UID, pod.Namespace, pod.Name, pod.Container
	return o
}

// Row is one listener over a window between two snapshots: what `top`
// shows. Counts are exact deltas; rates are counts / window.
type Row struct {
	Netns             uint32             `json:"netns"`
	Addr              string             `json:"addr"`
	Port              uint16             `json:"port"`
	Owner             Owner              `json:"owner"`
	WindowSeconds     float64            `json:"window_seconds"`
	Accepted          uint64             `json:"accepted"`
	AcceptedPerSecond float64            `json:"accepted_per_second"`
	P50Seconds        *float64           `json:"syn_to_accept_p50_seconds"` // null: no connection in the window
	P99Seconds        *float64           `json:"syn_to_accept_p99_seconds"`
	AcceptQueue       uint32             `json:"accept_queue"`
	Backlog           uint32             `json:"backlog"`
	RequestedBacklog  uint32             `json:"requested_backlog"`
	Drops             map[string]uint64  `json:"drops"`
	DropsPerSecond    map[string]float64 `json:"drops_per_second"`
	DropsTotal        uint64             `json:"drops_total"`
	Cookies           uint64             `json:"syncookies_sent"`
	SynackRetrans     uint64             `json:"synack_retransmits"`
	AcceptEMFILE      uint64             `json:"accept_emfile"`
	AcceptENFILE      uint64             `json:"accept_enfile"`
}

// Rate is n per second over the row's window.
func (r *Row) Rate(n uint64) float64 {
	if r.WindowSeconds <= 0 {
		return 0
	}
	return float64(n) / r.WindowSeconds
}

// Rates compares two snapshots of the same source, worst listener first:
// most drops, then most accept() failures, then slowest p99.
func Rates(prev, cur Snapshot) []Row {
	window := cur.Time.Sub(prev.Time).Seconds()
	before := make(map[string]*Listener, len(prev.Listeners))
	for i := range prev.Listeners {
		before[prev.Listeners[i].Key()] = &prev.Listeners[i]
	}
	rows := make([]Row, 0, len(cur.Listeners))
	for i := range cur.Listeners {
		c := &cur.Listeners[i]
		p := before[c.Key()]
		if p == nil || restarted(p, c) {
			p = &Listener{} // new since prev: everything it counts is in the window
		}
		r := Row{Netns: c.Netns, Addr: c.Addr, Port: c.Port, Owner: c.Owner, WindowSeconds: window,
			AcceptQueue: c.AcceptQueue, Backlog: c.Backlog, RequestedBacklog: c.RequestedBacklog,
			Accepted: c.Accepted - p.Accepted, Cookies: c.CookiesSent - p.CookiesSent,
			SynackRetrans: c.SynackRetrans - p.SynackRetrans,
			AcceptEMFILE:  c.AcceptEMFILE - p.AcceptEMFILE, AcceptENFILE: c.AcceptENFILE - p.AcceptENFILE,
			Drops: map[string]uint64{}, DropsPerSecond: map[string]float64{}}
		r.AcceptedPerSecond = r.Rate(r.Accepted)
		for reason, n := range c.Drops {
			d := n - p.Drops[reason]
			r.Drops[reason] = d
			r.DropsPerSecond[reason] = r.Rate(d)
			r.DropsTotal += d
		}
		if c.SYNToAccept != nil {
			delta := c.SYNToAccept.Counts
			if p.SYNToAccept != nil && len(p.SYNToAccept.Counts) == len(delta) {
				delta = make([]uint64, len(c.SYNToAccept.Counts))
				for j := range delta {
					delta[j] = c.SYNToAccept.Counts[j] - p.SYNToAccept.Counts[j]
				}
			}
			r.P50Seconds = quantile(0.5, c.SYNToAccept.Bounds, delta)
			r.P99Seconds = quantile(0.99, c.SYNToAccept.Bounds, delta)
		}
		rows = append(rows, r)
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.DropsTotal != b.DropsTotal {
			return a.DropsTotal > b.DropsTotal
		}
		if fa, fb := a.AcceptEMFILE+a.AcceptENFILE, b.AcceptEMFILE+b.AcceptENFILE; fa != fb {
			return fa > fb
		}
		return deref(a.P99Seconds) > deref(b.P99Seconds)
	})
	return rows
}

func deref(p *float64) float64 {
	if p == nil {
		return -1
	}
	return *p
}

// restarted: a counter went backwards, the listener was closed and opened
// again between the snapshots.
func restarted(p, c *Listener) bool {
	if c.Accepted < p.Accepted || c.SYNs < p.SYNs || c.CookiesSent < p.CookiesSent ||
		c.AcceptEMFILE < p.AcceptEMFILE || c.AcceptENFILE < p.AcceptENFILE || c.SynackRetrans < p.SynackRetrans {
		return true
	}
	for r, n := range c.Drops {
		if n < p.Drops[r] {
			return true
		}
	}
	return false
}

// quantile estimates the q-quantile of per-bucket counts (the last is
// +Inf) as Prometheus's histogram_quantile does: linear within the bucket;
// the lowest bucket starts at 0; a quantile in +Inf is the last bound.
func quantile(q float64, bounds []float64, counts []uint64) *float64 {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 || len(counts) != len(bounds)+1 {
		return nil
	}
	rank := q * float64(total)
	var cum uint64
	for i, c := range counts {
		if float64(cum+c) < rank || c == 0 {
			cum += c
			continue
		}
		if i == len(bounds) {
			v := bounds[len(bounds)-1]
			return &v
		}
		lo := 0.0
		if i > 0 {
			lo = bounds[i-1]
		}
		v := lo + (bounds[i]-lo)*(rank-float64(cum))/float64(c)
		v = math.Max(v, lo)
		return &v
	}
	v := bounds[len(bounds)-1]
	return &v
}
