// Package exporter turns what the loader sees into Prometheus metrics: the
// kernel's per-listener counters are read at scrape time; the latency
// histograms are fed per connection by the ring-buffer reader.
package exporter

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Source is what the collector reads at scrape time; the loader's Tracer
// is one, tests hand it a fake.
type Source interface {
	Listeners() ([]events.Listener, error)
	Counters() (events.Counters, error)
	Programs() ([]events.ProgramStats, error)
	Hooks() []events.Hook
}

const ns = "listenwatch"

var listenerLabels = []string{"netns", "addr", "port"}

// typedDesc carries its value type, so one list feeds Describe and Collect.
// It also keeps what the direct gathering (gather.go) writes without the
// registry: name, help, label names.
type typedDesc struct {
	desc      *prometheus.Desc
	valueType prometheus.ValueType
	family
}

// histDesc is a histogram family's descriptor.
type histDesc struct {
	desc *prometheus.Desc
	family
}

// Options choose the optional, per-listener families: each costs series
// on every listener of every node, so the default is what answers the
// on-call questions (is it dropping, how slow, network or application)
// at 38 series per listener (108 before these options existed).
type Options struct {
	// LatencySplit adds the handshake-duration and accept-queue-wait
	// histograms (15 series each). Without it their sums are still
	// exported as counters: mean handshake vs mean wait per listener.
	LatencySplit bool
	// QueueLengthHistogram adds the accept-queue length at each connection
	// (21 series); the current length is a gauge either way.
	QueueLengthHistogram bool
	// Filter chooses the listeners that get series (zero: all).
	Filter Filter
}

// listenerState is the userspace side of one listener: its histograms and
// the connections it could not time.
type listenerState struct {
	handshake, wait, total hist
	queueLen               lenHist
	incomplete             [3]atomic.Uint64 // by events.Missing: syn, handshake, invalid
	labels                 []string
	// touched is set by Observe and cleared by each scrape: a closed
	// listener's state is dropped once a scrape interval passes untouched.
	touched atomic.Bool
}

// descs are every family the collector exports, built once.
type descs struct {
	syns, handshakes, accepted, sockets, backlog, info   typedDesc
	reqBacklog, drops, cookies, synackRetx, acceptErrors typedDesc
	acceptQLen, synQLen                                  typedDesc
	incomplete, handshakeSum, waitSum                    typedDesc
	hookInfo, lost, records, decodeErrors, unattributed  typedDesc
	recursionMisses, runSeconds, runs, sourceSuccess     typedDesc
	podNames, criErrors, listenerCount                   typedDesc
	evicted, capacity                                    typedDesc
	// Histograms are built from their own state, not from a value type.
	queueLenHist, handshakeDur, queueWait, synToAccept histDesc
}

// all lists every descriptor the options enable once, for Describe.
func (d *descs) all(o Options) []*prometheus.Desc {
	out := []*prometheus.Desc{d.synToAccept.desc}
	if o.LatencySplit {
		out = append(out, d.handshakeDur.desc, d.queueWait.desc)
	}
	if o.QueueLengthHistogram {
		out = append(out, d.queueLenHist.desc)
	}
	for _, t := range []typedDesc{
		d.syns, d.handshakes, d.accepted, d.sockets, d.backlog, d.info,
		d.reqBacklog, d.drops, d.cookies, d.synackRetx, d.acceptErrors,
		d.acceptQLen, d.synQLen, d.incomplete, d.handshakeSum, d.waitSum,
		d.hookInfo, d.lost, d.records, d.decodeErrors, d.unattributed,
		d.recursionMisses, d.runSeconds, d.runs, d.sourceSuccess,
		d.podNames, d.criErrors, d.listenerCount, d.evicted, d.capacity,
	} {
		out = append(out, t.desc)
	}
	return out
}

// Collector is a prometheus.Collector. Observe is called by the single
// ring-buffer reader; Collect by any number of scrapes.
type Collector struct {
	src  Source
	proc procfs.FS // where the owners' comm is read
	pods *pods.Names
	opts Options
	log  zerolog.Logger
	d    descs

	// Copy-on-write: the reader looks up without locking; a new listener
	// (rare) copies the map under mu.
	listeners atomic.Pointer[map[events.ListenerKey]*listenerState]
	mu        sync.Mutex
}

// The sources a scrape reads, each reported by listenwatch_scrape_source_success.
const (
	sourceListeners = "listeners"
	sourceCounters  = "counters"
	sourcePrograms  = "programs"
)

// New builds a collector reading src. Descriptors are built once here.
func New(src Source, proc procfs.FS, log zerolog.Logger) *Collector {
	desc := func(name, help string, labels ...string) histDesc {
		fq := prometheus.BuildFQName(ns, "", name)
		return histDesc{prometheus.NewDesc(fq, help, labels, nil), newFamily(fq, help, labels)}
	}
	counter := func(name, help string, labels ...string) typedDesc {
		h := desc(name, help, labels...)
		return typedDesc{h.desc, prometheus.CounterValue, h.family}
	}
	gauge := func(name, help string, labels ...string) typedDesc {
		h := desc(name, help, labels...)
		return typedDesc{h.desc, prometheus.GaugeValue, h.family}
	}
	ll := listenerLabels
	c := &Collector{src: src, proc: proc, pods: pods.NewNames(proc, nil), log: log, d: descs{
		syns:         counter("listener_syns_received_total", "SYNs that reached the listener: queued, answered with a cookie, or dropped.", ll...),
		handshakes:   counter("listener_handshakes_completed_total", "Handshakes completed: child sockets put in the accept queue.", ll...),
		accepted:     counter("listener_connections_accepted_total", "Connections returned to the application by accept().", ll...),
		sockets:      gauge("listener_sockets", "Listening sockets with this address now (more than 1 with SO_REUSEPORT; 0 after close).", ll...),
		backlog:      gauge("listener_backlog", "Effective accept-queue limit (sk_max_ack_backlog = min(listen() backlog, net.core.somaxconn)); 0 if the listener predates the agent.", ll...),
		acceptQLen:   gauge("listener_accept_queue_length", "Accept-queue length (completed connections not yet accepted) at the last SYN the listener received; compare with listenwatch_listener_backlog.", ll...),
		synQLen:      gauge("listener_syn_queue_length", "SYN-queue length (handshakes in progress) at the last SYN the listener received.", ll...),
		reqBacklog:   gauge("listener_backlog_requested", "Backlog the application passed to listen(), before the net.core.somaxconn cap; 0 if the listener predates the agent.", ll...),
		drops:        counter("listener_drops_total", "Connections the listener refused, by reason: accept_queue_full_* add up to the kernel's ListenOverflows, all reasons to ListenDrops.", append(ll, "reason")...),
		cookies:      counter("listener_syncookies_sent_total", "SYNs answered with a SYN cookie because the SYN queue was full.", ll...),
		synackRetx:   counter("listener_synack_retransmits_total", "SYN-ACKs retransmitted: final ACKs lost or clients that never complete.", ll...),
		acceptErrors: counter("listener_accept_errors_total", "accept() calls that failed for want of a file descriptor, by errno (EMFILE: process limit, ENFILE: system limit); the connection stays queued.", append(ll, "errno")...),
		info:         gauge("listener_info", "Processes that own the listener (called listen() or accept() on it and still run; up to 4) and, in Kubernetes, their pod UID, namespace, pod and container names (from the container runtime; names empty without one): one series per process. When no owner runs, the pod whose sandbox owns the network namespace. Join: * on(netns, addr, port) group_left(namespace, pod) listenwatch_listener_info.", append(ll, "pid", "comm", "pod_uid", "namespace", "pod", "container")...),
		handshakeSum: counter("handshake_seconds_total", "Sum of the handshake durations (SYN-ACK sent -> final ACK) of accepted connections: divided by the rate of listenwatch_listener_connections_accepted_total it is the mean; compare with listenwatch_accept_queue_wait_time_seconds_total (network or application?).", ll...),
		waitSum:      counter("accept_queue_wait_time_seconds_total", "Sum of the accept-queue waits (handshake complete -> accept() returned) of accepted connections: the application's share of the latency.", ll...),
		incomplete:   counter("incomplete_connections_total", "Accepted connections with a stage not observed (agent started later, SYN cookie, or record evicted): counted, never timed.", append(ll, "missing")...),

		queueLenHist: desc("accept_queue_length_at_connection", "Accept-queue length when each accepted connection was queued, itself included: how close to the backlog the listener runs.", ll...),
		handshakeDur: desc("handshake_duration_seconds", "Time from SYN-ACK sent to handshake complete (final ACK received), per accepted connection.", ll...),
		queueWait:    desc("accept_queue_wait_seconds", "Time a completed connection waited in the accept queue until accept() returned it.", ll...),
		synToAccept:  desc("syn_to_accept_seconds", "Time from the SYN (answered by the SYN-ACK) to accept() returning the connection.", ll...),

		hookInfo:     gauge("hook_info", "Attach mode of each stage on this kernel (mode=none: not attached).", "stage", "mode"),
		lost:         counter("ringbuf_lost_events_total", "Events dropped because the ring buffer was full."),
		records:      counter("ringbuf_events_total", "Events read from the ring buffer."),
		decodeErrors: counter("decode_errors_total", "Ring-buffer records that could not be decoded."),
		unattributed: counter("unattributed_events_total", "Events whose listener was not found in the registry, by stage.", "stage"),

		recursionMisses: counter("bpf_recursion_misses_total", "Program runs the kernel skipped because it was already running on that CPU.", "program"),
		runSeconds:      counter("bpf_run_seconds_total", "CPU time spent in the program (only while kernel.bpf_stats_enabled=1).", "program"),
		runs:            counter("bpf_runs_total", "Runs of the program (only while kernel.bpf_stats_enabled=1).", "program"),
		evicted:         counter("listener_table_evictions_total", "Open listeners the kernel evicted from the full listener table (LRU): their counts are lost. Raise --listener-table-size when this grows."),
		capacity:        gauge("listener_table_capacity", "Entries of the listener table (--listener-table-size); compare with sum(listenwatch_listeners)."),
		listenerCount:   gauge("listeners", "Listeners known to the kernel side, by state: exported (with series) or filtered (left out by --listen-ports or the namespace selectors).", "state"),
		podNames:        gauge("pod_names_info", "Where pod names come from: source=cri (the container runtime at endpoint) or none (pod UIDs from cgroups only, no names).", "source", "endpoint", "runtime"),
		criErrors:       counter("cri_refresh_errors_total", "Refreshes of the pod-name cache that failed (the container runtime did not answer); names may be stale."),
		sourceSuccess:   gauge("scrape_source_success", "1 when this scrape read the source (listeners, counters, programs) from the kernel, 0 when it failed (the error is logged).", "source"),
	}}
	m := map[events.ListenerKey]*listenerState{}
	c.listeners.Store(&m)
	return c
}

// WithOptions enables optional families; call before registering.
func (c *Collector) WithOptions(o Options) *Collector {
	c.opts = o
	return c
}

// WithPods names owners' pods with n (its CRI resolver, when it has one);
// call before registering.
func (c *Collector) WithPods(n *pods.Names) *Collector {
	c.pods = n
	return c
}

func listenerLabelValues(k events.ListenerKey) []string {
	return []string{strconv.FormatUint(uint64(k.Netns), 10), k.Addr.String(), strconv.Itoa(int(k.Port))}
}

func (c *Collector) state(k events.ListenerKey) *listenerState {
	if s := (*c.listeners.Load())[k]; s != nil {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.listeners.Load()
	if s := old[k]; s != nil {
		return s
	}
	m := make(map[events.ListenerKey]*listenerState, len(old)+1)
	for k2, v := range old {
		m[k2] = v
	}
	s := &listenerState{labels: listenerLabelValues(k)}
	m[k] = s
	c.listeners.Store(&m)
	return s
}

// Observe records one accepted connection. The reader calls it for every
// event: no allocation once the listener is known.
func (c *Collector) Observe(conn *events.Conn) {
	if conn.Flags&events.FlagNoListener != 0 {
		// Counted by the kernel as unattributed; no series for it, so
		// label sets stay bounded by the registry.
		return
	}
	s := c.state(conn.Listener)
	if !s.touched.Load() {
		s.touched.Store(true) // a load first: no cache-line write per event
	}
	tl := conn.Timeline()
	// Without the split only the sums are exported: no bucket search.
	if tl.HasHandshake {
		if c.opts.LatencySplit {
			s.handshake.observe(tl.Handshake)
		} else {
			s.handshake.sum.Add(int64(tl.Handshake))
		}
	}
	if tl.HasQueueWait {
		if c.opts.LatencySplit {
			s.wait.observe(tl.QueueWait)
		} else {
			s.wait.sum.Add(int64(tl.QueueWait))
		}
	}
	if tl.HasTotal {
		s.total.observe(tl.Total)
	}
	if tl.Missing != events.MissingNone {
		s.incomplete[tl.Missing-1].Add(1)
	}
	if c.opts.QueueLengthHistogram && conn.AcceptQueueLen > 0 {
		s.queueLen.observe(conn.AcceptQueueLen)
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d.all(c.opts) {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) { c.collect(chanSink{ch}) }

// collect writes every series to out: a channel of prometheus.Metric
// (Collect, for registries and tests), or protobufs written directly
// (Gatherer, for /metrics: no per-series checks and sorts).
func (c *Collector) collect(out sink) {
	d := &c.d
	ls, err := c.src.Listeners()
	if e, ok := out.(interface{ expect(int) }); ok {
		e.expect(len(ls))
	}
	c.sourceRead(out, sourceListeners, err)
	// One /proc read per process and scrape, not per listener.
	owned, comms := map[uint32]pods.Pod{}, map[uint32]string{}
	f := &c.opts.Filter
	var filtered map[events.ListenerKey]bool
	for i := range ls {
		l := ls[i]
		if !f.port(l.Key) || (f.byNamespace() && !f.namespace(c.listenerPod(&l, owned, comms).Namespace)) {
			if filtered == nil {
				filtered = map[events.ListenerKey]bool{}
			}
			filtered[l.Key] = true
			continue
		}
		lv := listenerLabelValues(l.Key)
		out.value(d.syns, float64(l.SYNs), lv...)
		out.value(d.handshakes, float64(l.Handshakes), lv...)
		out.value(d.accepted, float64(l.Accepted), lv...)
		out.value(d.sockets, float64(l.Sockets), lv...)
		out.value(d.backlog, float64(l.Backlog), lv...)
		out.value(d.reqBacklog, float64(l.RequestedBacklog), lv...)
		out.value(d.acceptQLen, float64(l.AcceptQueueLen), lv...)
		out.value(d.synQLen, float64(l.SYNQueueLen), lv...)
		out.value(d.cookies, float64(l.CookiesSent), lv...)
		out.value(d.synackRetx, float64(l.SynackRetrans), lv...)
		// The series with one label more last: the ones above share
		// their label pairs (gather.go).
		for r, v := range l.Drops {
			out.value(d.drops, float64(v), append(lv[:3:3], events.DropReason(r).String())...)
		}
		out.value(d.acceptErrors, float64(l.AcceptEMFILE), append(lv[:3:3], "EMFILE")...)
		out.value(d.acceptErrors, float64(l.AcceptENFILE), append(lv[:3:3], "ENFILE")...)
		c.ownerInfo(out, &l, lv, owned, comms)
	}
	out.value(d.listenerCount, float64(len(ls)-len(filtered)), "exported")
	out.value(d.listenerCount, float64(len(filtered)), "filtered")

	c.evict(ls, err == nil)
	for k, s := range *c.listeners.Load() {
		if filtered[k] || !f.port(k) {
			continue
		}
		n, sum, b := s.total.snapshot()
		out.histogram(d.synToAccept, n, sum, b, s.labels...)
		out.value(d.handshakeSum, s.handshake.sumSeconds(), s.labels...)
		out.value(d.waitSum, s.wait.sumSeconds(), s.labels...)
		if c.opts.LatencySplit {
			n, sum, b = s.handshake.snapshot()
			out.histogram(d.handshakeDur, n, sum, b, s.labels...)
			n, sum, b = s.wait.snapshot()
			out.histogram(d.queueWait, n, sum, b, s.labels...)
		}
		if c.opts.QueueLengthHistogram {
			n, sum, b := s.queueLen.snapshot()
			out.histogram(d.queueLenHist, n, sum, b, s.labels...)
		}
		for i, m := range []events.Missing{events.MissingSYN, events.MissingHandshake, events.MissingInvalid} {
			out.value(d.incomplete, float64(s.incomplete[i].Load()), append(s.labels[:3:3], m.String())...)
		}
	}

	for _, h := range c.src.Hooks() {
		out.value(d.hookInfo, 1, string(h.Stage), string(h.Mode))
	}
	source, endpoint, runtime := c.pods.Source()
	out.value(d.podNames, 1, source, endpoint, runtime)
	var criErrs uint64
	if r := c.pods.Resolver(); r != nil {
		_, criErrs, _, _ = r.Stats()
	}
	out.value(d.criErrors, float64(criErrs))

	cs, err := c.src.Counters()
	c.sourceRead(out, sourceCounters, err)
	if err == nil {
		out.value(d.lost, float64(cs.RingbufLost))
		out.value(d.records, float64(cs.Records))
		out.value(d.decodeErrors, float64(cs.DecodeErrors))
		out.value(d.unattributed, float64(cs.UnattributedSYN), string(events.StageSYN))
		out.value(d.unattributed, float64(cs.UnattributedHandshake), string(events.StageHandshake))
		out.value(d.unattributed, float64(cs.UnattributedAccept), string(events.StageAccept))
		out.value(d.evicted, float64(cs.ListenersEvicted))
		out.value(d.capacity, float64(cs.ListenerCapacity))
	}

	ps, err := c.src.Programs()
	c.sourceRead(out, sourcePrograms, err)
	for _, p := range ps {
		out.value(d.recursionMisses, float64(p.RecursionMisses), p.Name)
		out.value(d.runSeconds, p.RunTime.Seconds(), p.Name)
		out.value(d.runs, float64(p.RunCount), p.Name)
	}
}

// ownerInfo emits listener_info once per owning process that still runs;
// when none does (or the owners are unknown), once for the process the
// kernel last saw.
func (c *Collector) ownerInfo(out sink, l *events.Listener, lv []string, owned map[uint32]pods.Pod, comms map[uint32]string) {
	n := 0
	for i, pid := range l.Owners {
		if pid == 0 || slices.Contains(l.Owners[:i], pid) {
			continue
		}
		if comm := c.comm(pid, owned, comms); comm != "" {
			p := owned[pid]
			out.value(c.d.info, 1, append(lv[:3:3], strconv.FormatUint(uint64(pid), 10), comm, p.UID, p.Namespace, p.Name, p.Container)...)
			n++
		}
	}
	if n == 0 {
		p := c.listenerPod(l, owned, comms)
		out.value(c.d.info, 1, append(lv[:3:3], strconv.FormatUint(uint64(l.PID), 10), l.Comm, p.UID, p.Namespace, p.Name, p.Container)...)
	}
}

// comm reads a process's name and pod once per scrape ("" once exited).
func (c *Collector) comm(pid uint32, owned map[uint32]pods.Pod, comms map[uint32]string) string {
	comm, seen := comms[pid]
	if !seen {
		if b, err := os.ReadFile(c.proc.PID(pid, "comm")); err == nil {
			comm = strings.TrimSpace(string(b))
		}
		comms[pid] = comm
		owned[pid] = c.pods.Of(pid)
	}
	return comm
}

// listenerPod is the pod a listener belongs to: its first owner that runs
// in one, else the process the kernel last saw, else the pod whose sandbox
// owns its network namespace (its processes gone).
func (c *Collector) listenerPod(l *events.Listener, owned map[uint32]pods.Pod, comms map[uint32]string) pods.Pod {
	for _, pid := range l.Owners {
		if pid != 0 && c.comm(pid, owned, comms) != "" && owned[pid].UID != "" {
			return owned[pid]
		}
	}
	c.comm(l.PID, owned, comms)
	if p := owned[l.PID]; p.UID != "" {
		return p
	}
	return c.pods.OfNetns(l.Key.Netns)
}

// sourceRead exports whether one source could be read, and logs why not.
func (c *Collector) sourceRead(out sink, source string, err error) {
	ok := 1.0
	if err != nil {
		ok = 0
		c.log.Error().Err(err).Str("source", source).Msg("scrape: could not read kernel state")
	}
	out.value(c.d.sourceSuccess, ok, source)
}

// evict drops the histograms of listeners that are closed (or gone from
// the kernel's registry) and saw no connection since the last scrape, so
// that namespaces coming and going (pods) do not leave series behind.
func (c *Collector) evict(ls []events.Listener, valid bool) {
	if !valid {
		return
	}
	open := make(map[events.ListenerKey]bool, len(ls))
	for _, l := range ls {
		if l.Sockets > 0 {
			open[l.Key] = true
		}
	}
	cur := *c.listeners.Load()
	var gone []events.ListenerKey
	for k, s := range cur {
		if !s.touched.Swap(false) && !open[k] {
			gone = append(gone, k)
		}
	}
	if len(gone) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.listeners.Load()
	m := make(map[events.ListenerKey]*listenerState, len(old))
	for k, v := range old {
		m[k] = v
	}
	for _, k := range gone {
		delete(m, k)
	}
	c.listeners.Store(&m)
}

// Listeners reports how many listeners have histogram state: bounded by
// the kernel's registry, whatever the traffic.
func (c *Collector) Listeners() int { return len(*c.listeners.Load()) }

// ListenersIn is Listeners for one network namespace.
func (c *Collector) ListenersIn(netns uint32) int {
	n := 0
	for k := range *c.listeners.Load() {
		if k.Netns == netns {
			n++
		}
	}
	return n
}

// SYNToAccept returns a listener's SYN -> accept histogram as per-bucket
// counts (the last one +Inf), for the on-call views.
func (c *Collector) SYNToAccept(k events.ListenerKey) (bounds []float64, counts []uint64, sum float64, ok bool) {
	s := (*c.listeners.Load())[k]
	if s == nil {
		return nil, nil, 0, false
	}
	counts = make([]uint64, len(s.total.counts))
	for i := range counts {
		counts[i] = s.total.counts[i].Load()
	}
	return bucketBounds[:], counts, s.total.sumSeconds(), true
}
