package main

// The scale of one busy node (make bench-scale): thousands of listeners in
// a hundred namespaces, and listener churn. Every figure is measured; a
// step that fails ends the run with an error, never a partial table.

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"golang.org/x/sys/unix"
)

var (
	scaleMode    = flag.Bool("scale", false, "run the scale bench (listeners, churn) instead of the throughput bench")
	scaleNS      = flag.Int("scale-netns", 100, "network namespaces")
	scalePerNS   = flag.Int("scale-listeners", 100, "listeners per namespace")
	churnRate    = flag.Int("churn-rate", 1000, "listeners opened and closed per second in the churn round")
	churnDur     = flag.Duration("churn", 30*time.Second, "churn round duration (0: skip)")
	smallTable   = flag.Uint("small-table", 4096, "listener table size of the round that must evict (0: skip)")
	scaleScrapes = flag.Int("scrapes", 5, "scrapes timed")
)

type scaleResult struct {
	Namespaces        int     `json:"namespaces"`
	Listeners         int     `json:"listeners"`
	Tracked           float64 `json:"tracked_listeners"`
	RSSMiB            float64 `json:"agent_rss_mib"`
	PeakRSSMiB        float64 `json:"agent_peak_rss_mib"`
	MapMiB            float64 `json:"bpf_map_memlock_mib"`
	ScrapeMedianS     float64 `json:"scrape_seconds_median"`
	ScrapeMaxS        float64 `json:"scrape_seconds_max"`
	ScrapeMB          float64 `json:"scrape_mb"`
	Series            int     `json:"series"`
	Evictions         float64 `json:"evictions_default_table"`
	SmallTable        uint    `json:"small_table"`
	SmallEvictions    float64 `json:"evictions_small_table"`
	SmallEvictionLogs int     `json:"eviction_log_lines_small_table"`
	ChurnOpened       int     `json:"churn_listeners_opened"`
	ChurnSeconds      float64 `json:"churn_seconds"`
	EntriesBefore     [3]int  `json:"map_entries_before_churn"` // listeners, socks, conns
	EntriesAfter      [3]int  `json:"map_entries_after_churn"`
	SeriesBefore      int     `json:"series_before_churn"`
	SeriesAfter       int     `json:"series_after_churn"`
	ChurnRSSMiB       float64 `json:"agent_rss_after_churn_mib"`
}

// scaleAgent is an agent started with extra flags, its log kept.
type scaleAgent struct {
	*agent
	logs *strings.Builder
}

func startScaleAgent(flags ...string) (*scaleAgent, error) {
	args := append([]string{"run", "--web.listen-address", metricsAddr, "--log-format", "json", "--cri-endpoint", "none"}, flags...)
	cmd := exec.Command(*agentBin, args...)
	logs := &strings.Builder{}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		said := false
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if !said && strings.Contains(sc.Text(), "serving metrics") {
				said = true
				ready <- nil
			}
		}
		if !said {
			ready <- errors.New("agent exited: " + logs.String())
		}
	}()
	go func() { cmd.Wait(); pw.Close() }()
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		return nil, errors.New("agent did not start in 60s")
	}
	return &scaleAgent{agent: &agent{cmd: cmd}, logs: logs}, nil
}

// stop ends the agent (the process is reaped by the goroutine above).
func (a *scaleAgent) stop() {
	a.cmd.Process.Signal(unix.SIGTERM)
	for range 100 {
		if a.cmd.ProcessState != nil {
			return
		}
		if err := a.cmd.Process.Signal(unix.Signal(0)); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// timedScrape fetches /metrics and returns its duration, size and series.
func timedScrape() (time.Duration, int, int, error) {
	start := time.Now()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, 0, fmt.Errorf("scrape: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	d := time.Since(start)
	if err != nil {
		return 0, 0, 0, err
	}
	series := 0
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && l[0] != '#' {
			series++
		}
	}
	return d, len(b), series, nil
}

// mapMemlock sums the memlock of the agent's BPF maps (from its fdinfo).
func mapMemlock(pid int) (float64, error) {
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	if err != nil {
		return 0, err
	}
	var total float64
	seen := map[string]bool{}
	for _, f := range fds {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		if !strings.Contains(s, "map_type:") {
			continue
		}
		var id, memlock string
		for _, l := range strings.Split(s, "\n") {
			if v, ok := strings.CutPrefix(l, "map_id:"); ok {
				id = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "memlock:"); ok {
				memlock = strings.TrimSpace(v)
			}
		}
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		n, _ := strconv.ParseFloat(memlock, 64)
		total += n
	}
	if total == 0 {
		return 0, errors.New("no BPF map found in the agent's fds")
	}
	return total / (1 << 20), nil
}

// mapEntries counts the entries of the agent's listener, socket and
// connection maps (by name, among the maps loaded on the host, the
// agent's own: it is the only listenwatch running).
func mapEntries() ([3]int, error) {
	var out [3]int
	names := map[string]int{"lw_listeners": 0, "lw_socks": 1, "lw_conns": 2}
	found := 0
	id := ebpf.MapID(0)
	for {
		next, err := ebpf.MapGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return out, err
		}
		id = next
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		info, err := m.Info()
		i, ok := names[info.Name]
		if err != nil || !ok {
			m.Close()
			continue
		}
		found++
		var k []byte
		v := make([]byte, m.ValueSize())
		it := m.Iterate()
		for it.Next(&k, &v) {
			out[i]++
		}
		err = it.Err()
		m.Close()
		if err != nil {
			return out, err
		}
	}
	if found != 3 {
		return out, fmt.Errorf("found %d of the 3 maps: is exactly one listenwatch running?", found)
	}
	return out, nil
}

// listenIn opens a listener on 127.0.0.1:port inside ns.
func listenIn(ns *netnstest.NS, port int) (int, error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Listen(fd, 128); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	return fd, err
}

func waitTracked(a *scaleAgent, want float64, timeout time.Duration) (float64, error) {
	deadline := time.Now().Add(timeout)
	var n float64
	for time.Now().Before(deadline) {
		m, err := scrape()
		if err == nil {
			n = 0
			for _, s := range m {
				if string(s.Metric["__name__"]) == "listenwatch_listeners" {
					n += float64(s.Value)
				}
			}
			if n >= want {
				return n, nil
			}
		}
		time.Sleep(time.Second)
	}
	return n, fmt.Errorf("the agent tracks %.0f listeners after %v, want at least %.0f", n, timeout, want)
}

func runScale() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (BPF, network namespaces)")
	}
	total := *scaleNS * *scalePerNS
	churnPorts := *churnRate * 3 // a listener lives about a second; ports are reused after 3
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(total + churnPorts + 4096), Max: uint64(total + churnPorts + 4096)}); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
	}
	var nss []*netnstest.NS
	defer func() {
		for _, ns := range nss {
			ns.Delete()
		}
	}()
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	fmt.Fprintf(os.Stderr, "scale: %d namespaces x %d listeners\n", *scaleNS, *scalePerNS)
	for i := range *scaleNS {
		name := fmt.Sprintf("lwscale%d", i)
		exec.Command("ip", "netns", "del", name).Run() // left over from an interrupted run
		ns, err := netnstest.Create(name)
		if err != nil {
			return err
		}
		nss = append(nss, ns)
		for p := range *scalePerNS {
			fd, err := listenIn(ns, 30000+p)
			if err != nil {
				return fmt.Errorf("listener %d in %s: %w", p, name, err)
			}
			fds = append(fds, fd)
		}
	}
	res := scaleResult{Namespaces: *scaleNS, Listeners: total, SmallTable: *smallTable}

	// Round 1: the default table, the listeners there before the agent.
	a, err := startScaleAgent("--closed-listener-retention", "5s")
	if err != nil {
		return err
	}
	defer a.stop()
	if res.Tracked, err = waitTracked(a, float64(total), 2*time.Minute); err != nil {
		return err
	}
	var times []float64
	for range *scaleScrapes {
		d, size, series, err := timedScrape()
		if err != nil {
			return err
		}
		times = append(times, d.Seconds())
		res.ScrapeMB, res.Series = float64(size)/1e6, series
	}
	sort.Float64s(times)
	res.ScrapeMedianS, res.ScrapeMaxS = median(times), times[len(times)-1]
	res.RSSMiB, res.PeakRSSMiB = a.rssMiB(), a.peakRSSMiB()
	if res.MapMiB, err = mapMemlock(a.cmd.Process.Pid); err != nil {
		return err
	}
	if res.Evictions, err = a.metric("listenwatch_listener_table_evictions_total"); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "scale: tracked %.0f, scrape %.2fs %.1f MB %d series, RSS %.0f MiB\n", res.Tracked, res.ScrapeMedianS, res.ScrapeMB, res.Series, res.RSSMiB)

	// Churn: churnRate listeners opened and closed per second, each open
	// about a second, spread over the namespaces.
	if *churnDur > 0 {
		time.Sleep(12 * time.Second) // earlier closed listeners (none expected) swept
		if res.EntriesBefore, err = mapEntries(); err != nil {
			return err
		}
		if _, _, res.SeriesBefore, err = timedScrape(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "scale: churn %d/s for %v\n", *churnRate, *churnDur)
		tick := time.NewTicker(100 * time.Millisecond)
		perTick := *churnRate / 10
		var live [][]int
		next := 0
		start := time.Now()
		for time.Since(start) < *churnDur {
			<-tick.C
			var batch []int
			for range perTick {
				ns := nss[next%len(nss)]
				port := 40000 + (next/len(nss))%(churnPorts/len(nss)+1)
				next++
				fd, err := listenIn(ns, port)
				if err != nil {
					continue // the port's previous life not closed yet
				}
				batch = append(batch, fd)
				res.ChurnOpened++
			}
			live = append(live, batch)
			if len(live) > 10 { // opened a second ago: close
				for _, fd := range live[0] {
					unix.Close(fd)
				}
				live = live[1:]
			}
		}
		tick.Stop()
		res.ChurnSeconds = time.Since(start).Seconds()
		for _, b := range live {
			for _, fd := range b {
				unix.Close(fd)
			}
		}
		// Retention (5s) plus a sweep period, with room.
		time.Sleep(15 * time.Second)
		if res.EntriesAfter, err = mapEntries(); err != nil {
			return err
		}
		if _, _, res.SeriesAfter, err = timedScrape(); err != nil {
			return err
		}
		res.ChurnRSSMiB = a.rssMiB()
	}
	a.stop()

	// Round 2: a table smaller than the node: evictions are counted and
	// logged, never silent. New listeners after the start (each a
	// registry update) push open ones out.
	if *smallTable > 0 {
		s, err := startScaleAgent("--listener-table-size", strconv.FormatUint(uint64(*smallTable), 10))
		if err != nil {
			return err
		}
		time.Sleep(5 * time.Second)
		for i, ns := range nss {
			for p := range 20 {
				fd, err := listenIn(ns, 31000+p)
				if err != nil {
					s.stop()
					return fmt.Errorf("listener %d in %s: %w", p, ns.Name, err)
				}
				fds = append(fds, fd)
			}
			_ = i
		}
		time.Sleep(5 * time.Second)
		res.SmallEvictions, err = s.metric("listenwatch_listener_table_evictions_total")
		s.stop()
		if err != nil {
			return err
		}
		for _, l := range strings.Split(s.logs.String(), "\n") {
			if strings.Contains(l, "evicted") {
				res.SmallEvictionLogs++
			}
		}
	}
	printScale(os.Stdout, &res)
	// What must hold, said after the figures.
	var bad []string
	if res.Evictions != 0 {
		bad = append(bad, fmt.Sprintf("%.0f evictions with the default table: it does not fit %d listeners", res.Evictions, total))
	}
	if res.SmallTable > 0 && (res.SmallEvictions == 0 || res.SmallEvictionLogs == 0) {
		bad = append(bad, "a table smaller than the node evicted silently")
	}
	if res.ChurnOpened > 0 && (res.EntriesAfter != res.EntriesBefore || res.SeriesAfter != res.SeriesBefore) {
		bad = append(bad, "listener churn leaked map entries or series")
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

func printScale(w io.Writer, r *scaleResult) {
	fmt.Fprintf(w, "\nscale: %d listeners in %d namespaces (idle, there before the agent)\n", r.Listeners, r.Namespaces)
	fmt.Fprintf(w, "  tracked                    %.0f (listenwatch_listeners, host listeners included)\n", r.Tracked)
	fmt.Fprintf(w, "  agent RSS                  %.1f MiB (peak %.1f MiB)\n", r.RSSMiB, r.PeakRSSMiB)
	fmt.Fprintf(w, "  BPF maps (memlock)         %.1f MiB\n", r.MapMiB)
	fmt.Fprintf(w, "  /metrics                   %.2f s median, %.2f s max, %.1f MB, %d series\n", r.ScrapeMedianS, r.ScrapeMaxS, r.ScrapeMB, r.Series)
	fmt.Fprintf(w, "  evictions, default table   %.0f\n", r.Evictions)
	if r.SmallTable > 0 {
		fmt.Fprintf(w, "  evictions, table of %d   %.0f counted, %d log lines\n", r.SmallTable, r.SmallEvictions, r.SmallEvictionLogs)
	}
	if r.ChurnOpened > 0 {
		fmt.Fprintf(w, "churn: %d listeners opened and closed in %.1f s (%.0f/s)\n", r.ChurnOpened, r.ChurnSeconds, float64(r.ChurnOpened)/r.ChurnSeconds)
		fmt.Fprintf(w, "  map entries (listeners, sockets, connections) before %v, after %v\n", r.EntriesBefore, r.EntriesAfter)
		fmt.Fprintf(w, "  series before %d, after %d; agent RSS after %.1f MiB\n", r.SeriesBefore, r.SeriesAfter, r.ChurnRSSMiB)
	}
}
