package diagnose

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/netns"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Source is where the doctor reads listeners; the loader's Tracer is one.
type Source interface {
	Listeners() ([]events.Listener, error)
}

// Doctor compares the listeners' counters once per interval, logs one
// warning per listener and cause, and keeps the last findings for the
// /diagnosis endpoint and the listenwatch_diagnosis metric.
type Doctor struct {
	src      Source
	proc     procfs.FS
	pods     *pods.Names
	interval time.Duration
	log      zerolog.Logger

	mu       sync.Mutex
	prev     map[events.ListenerKey]events.Listener
	findings []Finding
	at       time.Time

	desc, openFDs, maxFDs *prometheus.Desc
}

// New builds a doctor; Run drives it.
func New(src Source, proc procfs.FS, interval time.Duration, log zerolog.Logger) *Doctor {
	return &Doctor{
		src: src, proc: proc, pods: pods.NewNames(proc, nil), interval: interval, log: log,
		desc: prometheus.NewDesc("listenwatch_diagnosis_events",
			"Refused or failed connections in the last diagnosis interval, per listener, cause and the knob to turn (see /diagnosis for the sentence).",
			[]string{"netns", "addr", "port", "cause", "knob"}, nil),
		openFDs: prometheus.NewDesc("listenwatch_process_open_fds",
			"Open file descriptors of a process that owns a listener: accept() fails with EMFILE when it reaches listenwatch_process_max_fds.",
			[]string{"pid", "comm"}, nil),
		maxFDs: prometheus.NewDesc("listenwatch_process_max_fds",
			"RLIMIT_NOFILE (soft) of a process that owns a listener.", []string{"pid", "comm"}, nil),
	}
}

// WithPods names the listeners' pods in the sentences; call before Run.
func (d *Doctor) WithPods(n *pods.Names) *Doctor {
	d.pods = n
	return d
}

// Run diagnoses every interval until ctx ends.
func (d *Doctor) Run(ctx context.Context) {
	d.Step() // the baseline
	t := time.NewTicker(d.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Step()
		}
	}
}

// Step compares the listeners with the previous reading and returns what
// it found; the first call only records the baseline.
func (d *Doctor) Step() []Finding {
	ls, err := d.src.Listeners()
	if err != nil {
		d.log.Error().Err(err).Msg("diagnosis: cannot read listeners")
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	first := d.prev == nil
	interval := now.Sub(d.at)
	cur := make(map[events.ListenerKey]events.Listener, len(ls))
	var found []Finding
	settings := map[uint32]Settings{}
	for _, l := range ls {
		cur[l.Key] = l
		prev, ok := d.prev[l.Key]
		if first || !ok {
			continue // a new listener: its first reading is the baseline
		}
		if l.TotalDrops() == prev.TotalDrops() && l.CookiesSent == prev.CookiesSent &&
			l.AcceptEMFILE == prev.AcceptEMFILE && l.AcceptENFILE == prev.AcceptENFILE {
			continue
		}
		s, ok := settings[l.Key.Netns]
		if !ok {
			s = readSettings(d.proc, l.Key.Netns)
			settings[l.Key.Netns] = s
		}
		p := readProcess(d.proc, l.PID)
		p.Pod = d.pods.Of(l.PID)
		if p.Pod.UID == "" {
			p.Pod = d.pods.OfNetns(l.Key.Netns)
		}
		fs := Diagnose(prev, l, interval, s, p)
		for _, f := range fs {
			d.log.Warn().Str("listener", l.Key.String()).Uint32("pid", l.PID).Str("comm", l.Comm).
				Str("namespace", p.Pod.Namespace).Str("pod", p.Pod.Name).Str("container", p.Pod.Container).
				Str("cause", string(f.Cause)).Str("knob", f.Knob).Uint64("count", f.Count).Msg(f.Message)
		}
		found = append(found, fs...)
	}
	d.prev, d.at = cur, now
	if !first {
		d.findings = found
	}
	return found
}

// ServeHTTP lists the last interval's findings, one sentence per line.
func (d *Doctor) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(d.findings) == 0 {
		fmt.Fprintf(w, "no listener refused or failed connections in the last %s\n", d.interval)
		return
	}
	for _, f := range d.findings {
		fmt.Fprintln(w, f.Message)
	}
}

// Describe implements prometheus.Collector.
func (d *Doctor) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc; ch <- d.openFDs; ch <- d.maxFDs }

// Collect implements prometheus.Collector: the last findings, and the fd
// use of every process owning a listener, read now.
func (d *Doctor) Collect(ch chan<- prometheus.Metric) {
	if ls, err := d.src.Listeners(); err == nil {
		seen := map[uint32]bool{}
		for _, l := range ls {
			if l.PID == 0 || l.Sockets <= 0 || seen[l.PID] {
				continue
			}
			seen[l.PID] = true
			p := readProcess(d.proc, l.PID)
			if p.Limit < 0 {
				continue // exited
			}
			pid := strconv.FormatUint(uint64(l.PID), 10)
			ch <- prometheus.MustNewConstMetric(d.openFDs, prometheus.GaugeValue, float64(p.OpenFDs), pid, l.Comm)
			ch <- prometheus.MustNewConstMetric(d.maxFDs, prometheus.GaugeValue, float64(p.Limit), pid, l.Comm)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range d.findings {
		k := f.Listener.Key
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, float64(f.Count),
			strconv.FormatUint(uint64(k.Netns), 10), k.Addr.String(), strconv.Itoa(int(k.Port)), string(f.Cause), f.Knob)
	}
}

// ReadSettings reads the sysctls of the network namespace with this inode
// from inside it (a negative value: could not be read).
func ReadSettings(proc procfs.FS, inode uint32) Settings { return readSettings(proc, inode) }

// ReadProcess reads a process's open fds and RLIMIT_NOFILE.
func ReadProcess(proc procfs.FS, pid uint32) Process { return readProcess(proc, pid) }

// readSettings reads the namespace's sysctls from inside it.
func readSettings(proc procfs.FS, inode uint32) Settings {
	s := Settings{Somaxconn: -1, MaxSynBacklog: -1, Syncookies: -1, AbortOnOverflow: -1}
	path, err := netns.Find(proc, uint64(inode))
	if err != nil {
		return s
	}
	netns.Enter(path, func() error {
		// /proc/sys/net shows the reading thread's namespace.
		s.Somaxconn = readInt(proc.Path("sys", "net", "core", "somaxconn"))
		s.MaxSynBacklog = readInt(proc.Path("sys", "net", "ipv4", "tcp_max_syn_backlog"))
		s.Syncookies = readInt(proc.Path("sys", "net", "ipv4", "tcp_syncookies"))
		s.AbortOnOverflow = readInt(proc.Path("sys", "net", "ipv4", "tcp_abort_on_overflow"))
		return nil
	})
	return s
}

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// readProcess counts a process's open fds and reads its RLIMIT_NOFILE.
func readProcess(proc procfs.FS, pid uint32) Process {
	p := Process{OpenFDs: -1, Limit: -1}
	if pid == 0 {
		return p
	}
	fds, err := os.ReadDir(proc.PID(pid, "fd"))
	if err != nil {
		return p
	}
	p.OpenFDs = int64(len(fds))
	p.Limit = readNofile(proc.PID(pid, "limits"))
	return p
}

// readNofile reads the soft "Max open files" limit of /proc/PID/limits.
func readNofile(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	return parseNofile(f)
}

// parseNofile is readNofile on the text of /proc/PID/limits; -1 when the
// line is missing or unreadable ("unlimited" is not a number of fds).
func parseNofile(r io.Reader) int64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Max open files"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				// Unsigned: a limit is never negative.
				if v, err := strconv.ParseUint(fields[0], 10, 63); err == nil {
					return int64(v)
				}
			}
		}
	}
	return -1
}
