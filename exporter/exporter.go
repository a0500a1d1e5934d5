// Package exporter turns what the loader sees into Prometheus metrics: the
// kernel's per-listener counters are read at scrape time; the latency
// histograms are fed per connection by the ring-buffer reader.
package exporter

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Source is what the collector reads at scrape time; *loader.Tracer is one.
type Source interface {
	Listeners() ([]loader.Listener, error)
	Counters() (loader.Counters, error)
	Programs() ([]loader.ProgramStats, error)
	Hooks() []loader.Hook
}

const ns = "listenwatch"

var listenerLabels = []string{"netns", "addr", "port"}

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

// Collector is a prometheus.Collector. Observe is called by the single
// ring-buffer reader; Collect by any number of scrapes.
type Collector struct {
	src Source
	log zerolog.Logger

	// Copy-on-write: the reader looks up without locking; a new listener
	// (rare) copies the map under mu.
	listeners atomic.Pointer[map[events.ListenerKey]*listenerState]
	mu        sync.Mutex

	syns, handshakes, accepted, sockets, backlog, info   *prometheus.Desc
	reqBacklog, drops, cookies, synackRetx, acceptErrors *prometheus.Desc
	acceptQLen, synQLen, queueLenHist                    *prometheus.Desc
	handshakeDur, queueWait, synToAccept, incomplete     *prometheus.Desc
	hookInfo, lost, records, decodeErrors, unattributed  *prometheus.Desc
	recursionMisses, runSeconds, runs, scrapeErrors      *prometheus.Desc
	unattributedEvents                                   atomic.Uint64
	scrapeErrorCount                                     atomic.Uint64
}

// New builds a collector reading src. Descriptors are built once here.
func New(src Source, log zerolog.Logger) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
	}
	ll := listenerLabels
	c := &Collector{
		src: src,
		log: log,

		syns:         d("listener_syns_received_total", "SYNs that reached the listener: queued, answered with a cookie, or dropped.", ll...),
		handshakes:   d("listener_handshakes_completed_total", "Handshakes completed: child sockets put in the accept queue.", ll...),
		accepted:     d("listener_connections_accepted_total", "Connections returned to the application by accept().", ll...),
		sockets:      d("listener_sockets", "Listening sockets with this address now (more than 1 with SO_REUSEPORT; 0 after close).", ll...),
		backlog:      d("listener_backlog", "Effective accept-queue limit (sk_max_ack_backlog = min(listen() backlog, net.core.somaxconn)); 0 if the listener predates the agent.", ll...),
		acceptQLen:   d("listener_accept_queue_length", "Accept-queue length (completed connections not yet accepted) at the last SYN the listener received; compare with listenwatch_listener_backlog.", ll...),
		synQLen:      d("listener_syn_queue_length", "SYN-queue length (handshakes in progress) at the last SYN the listener received.", ll...),
		queueLenHist: d("accept_queue_length_at_connection", "Accept-queue length when each accepted connection was queued, itself included: how close to the backlog the listener runs.", ll...),
		reqBacklog:   d("listener_backlog_requested", "Backlog the application passed to listen(), before the net.core.somaxconn cap; 0 if the listener predates the agent.", ll...),
		drops:        d("listener_drops_total", "Connections the listener refused, by reason: accept_queue_full_* add up to the kernel's ListenOverflows, all reasons to ListenDrops.", append(ll, "reason")...),
		cookies:      d("listener_syncookies_sent_total", "SYNs answered with a SYN cookie because the SYN queue was full.", ll...),
		synackRetx:   d("listener_synack_retransmits_total", "SYN-ACKs retransmitted: final ACKs lost or clients that never complete.", ll...),
		acceptErrors: d("listener_accept_errors_total", "accept() calls that failed for want of a file descriptor, by errno (EMFILE: process limit, ENFILE: system limit); the connection stays queued.", append(ll, "errno")...),
		info:         d("listener_info", "Process that owns the listener (last to call listen() or accept()), and its Kubernetes pod UID (join with kube_pod_info{uid}) when it runs in one.", append(ll, "pid", "comm", "pod_uid")...),

		handshakeDur: d("handshake_duration_seconds", "Time from SYN-ACK sent to handshake complete (final ACK received), per accepted connection.", ll...),
		queueWait:    d("accept_queue_wait_seconds", "Time a completed connection waited in the accept queue until accept() returned it.", ll...),
		synToAccept:  d("syn_to_accept_seconds", "Time from the SYN to accept() returning the connection.", ll...),
		incomplete:   d("incomplete_connections_total", "Accepted connections with a stage not observed (agent started later, SYN cookie, or record evicted): counted, never timed.", append(ll, "missing")...),

		hookInfo:     d("hook_info", "Attach mode of each stage on this kernel (mode=none: not attached).", "stage", "mode"),
		lost:         d("ringbuf_lost_events_total", "Events dropped because the ring buffer was full."),
		records:      d("ringbuf_events_total", "Events read from the ring buffer."),
		decodeErrors: d("decode_errors_total", "Ring-buffer records that could not be decoded."),
		unattributed: d("unattributed_events_total", "Events whose listener was not found in the registry, by stage.", "stage"),

		recursionMisses: d("bpf_recursion_misses_total", "Program runs the kernel skipped because it was already running on that CPU.", "program"),
		runSeconds:      d("bpf_run_seconds_total", "CPU time spent in the program (only while kernel.bpf_stats_enabled=1).", "program"),
		runs:            d("bpf_runs_total", "Runs of the program (only while kernel.bpf_stats_enabled=1).", "program"),
		scrapeErrors:    d("scrape_errors_total", "Scrapes that could not read kernel state."),
	}
	m := map[events.ListenerKey]*listenerState{}
	c.listeners.Store(&m)
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
	if tl.HasHandshake {
		s.handshake.observe(tl.Handshake)
	}
	if tl.HasQueueWait {
		s.wait.observe(tl.QueueWait)
	}
	if tl.HasTotal {
		s.total.observe(tl.Total)
	}
	if tl.Missing != events.MissingNone {
		s.incomplete[tl.Missing-1].Add(1)
	}
	if conn.AcceptQueueLen > 0 {
		s.queueLen.observe(conn.AcceptQueueLen)
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.syns, c.handshakes, c.accepted, c.sockets, c.backlog, c.info,
		c.reqBacklog, c.drops, c.cookies, c.synackRetx, c.acceptErrors,
		c.acceptQLen, c.synQLen, c.queueLenHist,
		c.handshakeDur, c.queueWait, c.synToAccept, c.incomplete,
		c.hookInfo, c.lost, c.records, c.decodeErrors, c.unattributed,
		c.recursionMisses, c.runSeconds, c.runs, c.scrapeErrors,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ls, err := c.src.Listeners()
	if err != nil {
		c.scrapeFailed(err)
	}
	pods := map[uint32]string{} // one /proc read per process, not per listener
	for _, l := range ls {
		lv := listenerLabelValues(l.Key)
		ch <- prometheus.MustNewConstMetric(c.syns, prometheus.CounterValue, float64(l.SYNs), lv...)
		ch <- prometheus.MustNewConstMetric(c.handshakes, prometheus.CounterValue, float64(l.Handshakes), lv...)
		ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(l.Accepted), lv...)
		ch <- prometheus.MustNewConstMetric(c.sockets, prometheus.GaugeValue, float64(l.Sockets), lv...)
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(l.Backlog), lv...)
		ch <- prometheus.MustNewConstMetric(c.reqBacklog, prometheus.GaugeValue, float64(l.RequestedBacklog), lv...)
		ch <- prometheus.MustNewConstMetric(c.acceptQLen, prometheus.GaugeValue, float64(l.AcceptQueueLen), lv...)
		ch <- prometheus.MustNewConstMetric(c.synQLen, prometheus.GaugeValue, float64(l.SYNQueueLen), lv...)
		for r, v := range l.Drops {
			ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(v), append(lv[:3:3], loader.DropReason(r).String())...)
		}
		ch <- prometheus.MustNewConstMetric(c.cookies, prometheus.CounterValue, float64(l.CookiesSent), lv...)
		ch <- prometheus.MustNewConstMetric(c.synackRetx, prometheus.CounterValue, float64(l.SynackRetrans), lv...)
		ch <- prometheus.MustNewConstMetric(c.acceptErrors, prometheus.CounterValue, float64(l.AcceptEMFILE), append(lv[:3:3], "EMFILE")...)
		ch <- prometheus.MustNewConstMetric(c.acceptErrors, prometheus.CounterValue, float64(l.AcceptENFILE), append(lv[:3:3], "ENFILE")...)
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1,
			append(lv, strconv.FormatUint(uint64(l.PID), 10), l.Comm, pod(pods, l.PID))...)
	}

	c.evict(ls, err == nil)
	for _, s := range *c.listeners.Load() {
		for _, h := range []struct {
			d *prometheus.Desc
			h *hist
		}{{c.handshakeDur, &s.handshake}, {c.queueWait, &s.wait}, {c.synToAccept, &s.total}} {
			n, sum, b := h.h.snapshot()
			ch <- prometheus.MustNewConstHistogram(h.d, n, sum, b, s.labels...)
		}
		n, sum, b := s.queueLen.snapshot()
		ch <- prometheus.MustNewConstHistogram(c.queueLenHist, n, sum, b, s.labels...)
		for i, m := range []events.Missing{events.MissingSYN, events.MissingHandshake, events.MissingInvalid} {
			ch <- prometheus.MustNewConstMetric(c.incomplete, prometheus.CounterValue,
				float64(s.incomplete[i].Load()), append(s.labels[:3:3], m.String())...)
		}
	}

	for _, h := range c.src.Hooks() {
		ch <- prometheus.MustNewConstMetric(c.hookInfo, prometheus.GaugeValue, 1, string(h.Stage), string(h.Mode))
	}

	if cs, err := c.src.Counters(); err != nil {
		c.scrapeFailed(err)
	} else {
		ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(cs.RingbufLost))
		ch <- prometheus.MustNewConstMetric(c.records, prometheus.CounterValue, float64(cs.Records))
		ch <- prometheus.MustNewConstMetric(c.decodeErrors, prometheus.CounterValue, float64(cs.DecodeErrors))
		for stage, v := range map[loader.Stage]uint64{
			loader.StageSYN:       cs.UnattributedSYN,
			loader.StageHandshake: cs.UnattributedHandshake,
			loader.StageAccept:    cs.UnattributedAccept,
		} {
			ch <- prometheus.MustNewConstMetric(c.unattributed, prometheus.CounterValue, float64(v), string(stage))
		}
	}

	ps, err := c.src.Programs()
	if err != nil {
		c.scrapeFailed(err)
	}
	for _, p := range ps {
		ch <- prometheus.MustNewConstMetric(c.recursionMisses, prometheus.CounterValue, float64(p.RecursionMisses), p.Name)
		ch <- prometheus.MustNewConstMetric(c.runSeconds, prometheus.CounterValue, p.RunTime.Seconds(), p.Name)
		ch <- prometheus.MustNewConstMetric(c.runs, prometheus.CounterValue, float64(p.RunCount), p.Name)
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.CounterValue, float64(c.scrapeErrorCount.Load()))
}

// evict drops the histograms of listeners that are closed (or gone from
// the kernel's registry) and saw no connection since the last scrape, so
// that namespaces coming and going (pods) do not leave series behind.
func (c *Collector) evict(ls []loader.Listener, valid bool) {
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

func (c *Collector) scrapeFailed(err error) {
	c.scrapeErrorCount.Add(1)
	c.log.Error().Err(err).Msg("scrape: could not read kernel state")
}

// Listeners reports how many listeners have histogram state: bounded by
// the kernel's registry, whatever the traffic.
func (c *Collector) Listeners() int { return len(*c.listeners.Load()) }
