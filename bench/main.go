// Command bench measures what listenwatch costs under a connection storm:
// accept throughput with and without the agent, side by side in one run
// (A B A B ...), the BPF time per connection, the agent's CPU, RSS and
// ring-buffer losses, and a SYN flood round. Run with `make bench` as root.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/listenwatch/listenwatch/internal/netnstest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
)

type pair struct {
	Without   float64 `json:"without_conn_per_s"`
	With      float64 `json:"with_conn_per_s"`
	Ratio     float64 `json:"ratio"`
	AgentCPU  float64 `json:"agent_cpu_seconds"`
	AgentConn int64   `json:"with_connections"`
	Lost      float64 `json:"ringbuf_lost"`
}

type progCost struct {
	Name      string  `json:"program"`
	Runs      float64 `json:"runs"`
	NsPerRun  float64 `json:"ns_per_run"`
	NsPerConn float64 `json:"ns_per_conn"`
}

type result struct {
	Kernel           string       `json:"kernel"`
	Cores            int          `json:"cores"`
	RoundSeconds     float64      `json:"round_seconds"`
	Clients          int          `json:"clients"`
	Client           string       `json:"client"`
	Modes            string       `json:"hook_modes"`
	Pairs            []pair       `json:"pairs"`
	MedianCI         [2]float64   `json:"median_ratio_ci95"`
	CostRate         float64      `json:"cost_offered_conn_per_s"`
	CostPairs        []costPair   `json:"cost_pairs"`
	CostRatio        float64      `json:"cost_ratio_median"`
	CostCI           [2]float64   `json:"cost_ratio_ci95"`
	MedianRatio      float64      `json:"median_ratio"`
	BPF              []progCost   `json:"bpf"`
	BPFNsPerConn     float64      `json:"bpf_ns_per_conn"`
	BPFFloorNsPerRun float64      `json:"bpf_meter_floor_ns_per_run"`
	BPFFloorPerConn  float64      `json:"bpf_meter_floor_ns_per_conn"`
	BPFRounds        []float64    `json:"bpf_rounds_ns_per_conn"`
	BPFServer        *bpfFigure   `json:"bpf_server_side,omitempty"`
	CPUPer100k       float64      `json:"agent_cpu_seconds_per_100k_conn"`
	CPUPctPer10kRate float64      `json:"agent_cpu_percent_per_10k_conn_per_s"`
	PeakRSSMiB       float64      `json:"agent_peak_rss_mib"`
	StormLost        float64      `json:"storm_ringbuf_lost"`
	Flood            *flood       `json:"syn_flood,omitempty"`
	Syscall          *syscallTax  `json:"syscall_tax,omitempty"`
	Floor            *floorResult `json:"throughput_floor,omitempty"`
	CostFloor        *floorResult `json:"cost_floor,omitempty"`
}

// bpfFigure is one BPF round's figures.
type bpfFigure struct {
	Programs      []progCost `json:"programs"`
	NsPerConn     float64    `json:"ns_per_conn"`
	FloorNsPerRun float64    `json:"meter_floor_ns_per_run"`
	FloorPerConn  float64    `json:"meter_floor_ns_per_conn"`
	Rounds        []float64  `json:"rounds_ns_per_conn"`
}

type flood struct {
	Seconds       float64 `json:"seconds"`
	SYNsSeen      float64 `json:"syns_seen"`
	RSSStartMiB   float64 `json:"agent_rss_start_mib"`
	RSSEndMiB     float64 `json:"agent_rss_end_mib"`
	CPUPercent    float64 `json:"agent_cpu_percent"`
	Lost          float64 `json:"ringbuf_lost"`
	Scrapes       int     `json:"scrapes_ok"`
	ScrapesFailed int     `json:"scrapes_failed"`
}

var (
	agentBin   = flag.String("agent", "bin/listenwatch", "listenwatch binary")
	pairs      = flag.Int("pairs", 10, "throughput pairs, in A B B A order")
	roundDur   = flag.Duration("round", 2*time.Second, "duration of a throughput round")
	clients    = flag.Int("clients", 4, "client goroutines")
	floodDur   = flag.Duration("flood", 30*time.Second, "SYN flood duration (0: skip)")
	jsonOut    = flag.String("json", "bench-results.json", "write the figures here as JSON")
	agentFlags = flag.String("agent-flags", "", "extra flags for listenwatch run")
	// Where the clients' own sockets would run the same programs (see
	// tunclient.go): kernel clients on this machine, or a TUN client with
	// no socket, so that only the server side's programs run.
	clientMode = flag.String("client", "tun", "storm clients: tun (TCP from user space through a TUN device: no client socket, only the server's programs run, as on a node whose clients are elsewhere) or kernel (sockets in the server's namespace)")
	tunWindow  = flag.Int("tun-window", 32, "connections in flight with -client tun")
	bpfRoundsN = flag.Int("bpf-rounds", 3, "BPF cost rounds per client setting (the median round is reported)")
	// A wildcard listener is what most servers have (Go's ":8080" is a
	// dual-stack [::]); the programs find its entry after looking for the
	// packet's own address first, as the kernel does.
	listenAddr = flag.String("listen", "10.77.0.1:8080", "where the bench server listens in its namespace: 10.77.0.1:PORT, or a wildcard (:PORT, 0.0.0.0:PORT); clients dial 10.77.0.1:PORT")
)

const metricsAddr = "127.0.0.1:19810"

func main() {
	flag.Parse()
	if *syscallProbeN > 0 {
		fmt.Printf("%.2f\n", nsPerSyscall(*syscallProbeN))
		return
	}
	if *clientMode != "kernel" && *clientMode != "tun" {
		fmt.Fprintf(os.Stderr, "bench: -client %q: kernel or tun\n", *clientMode)
		os.Exit(2)
	}
	do := run
	switch {
	case *scaleMode && *bpfBaseline != "", *meterMode && (*scaleMode || *bpfBaseline != ""):
		fmt.Fprintln(os.Stderr, "bench: -scale, -bpf-baseline and -meter are different benches: give one")
		os.Exit(2)
	case *meterMode:
		do = runMeter
	case *scaleMode:
		do = runScale
	case *bpfBaseline != "":
		do = runBPFCompare
	}
	if err := do(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (BPF, network namespaces)")
	}
	ns, srv, cleanup, err := stormSetup()
	if err != nil {
		return err
	}
	defer cleanup()
	var u unix.Utsname
	unix.Uname(&u)
	res := result{Kernel: unix.ByteSliceToString(u.Release[:]), Cores: runtime.NumCPU(),
		RoundSeconds: roundDur.Seconds(), Clients: *clients, Client: *clientMode}

	// Throughput pairs, A B then B A (A: without the agent), so that a
	// drift of the machine over the run does not favour either side.
	var ratios []float64
	var progs []string // the programs the agent attached
	for i := range *pairs {
		var without, with float64
		var p pair
		for _, withAgent := range []bool{i%2 == 1, i%2 == 0} {
			if !withAgent {
				without = storm(ns, srv, *roundDur)
				continue
			}
			ag, err := startAgent()
			if err != nil {
				return err
			}
			lost0, err := ag.metric("listenwatch_ringbuf_lost_events_total")
			if err != nil {
				ag.stop()
				return fmt.Errorf("pair %d: %w", i+1, err)
			}
			// The agent's CPU over the storm only: the bench's own
			// scrapes around it (three per 2 s round, a few ms each)
			// made it read 2% of a core per 10k conn/s where perf of
			// the agent alone saw about 0.6%.
			cpu0 := ag.cpuSeconds()
			n := stormCount(ns, srv, *roundDur)
			cpu1 := ag.cpuSeconds()
			with = float64(n) / roundDur.Seconds()
			lost1, err := ag.metric("listenwatch_ringbuf_lost_events_total")
			if err == nil {
				res.Modes, err = ag.modes()
			}
			if err == nil && progs == nil {
				progs, err = ag.programs()
			}
			if err != nil {
				ag.stop()
				return fmt.Errorf("pair %d: %w", i+1, err)
			}
			p.AgentCPU, p.AgentConn, p.Lost = cpu1-cpu0, n, lost1-lost0
			if rss := ag.peakRSSMiB(); rss > res.PeakRSSMiB {
				res.PeakRSSMiB = rss
			}
			ag.stop()
		}
		if without == 0 || with == 0 {
			return fmt.Errorf("pair %d: a round made no connection (without %.0f/s, with %.0f/s)", i+1, without, with)
		}
		p.Without, p.With, p.Ratio = without, with, with/without
		res.Pairs = append(res.Pairs, p)
		ratios = append(ratios, p.Ratio)
		res.StormLost += p.Lost
		fmt.Fprintf(os.Stderr, "pair %d: without %.0f/s with %.0f/s ratio %.3f\n", i+1, without, with, p.Ratio)
	}
	res.MedianRatio = median(ratios)
	res.MedianCI[0], res.MedianCI[1] = bootstrapMedianCI(ratios)
	var hooks []string
	if *floorPairs > 0 {
		var err error
		if hooks, err = agentHooks(agentObject(), progs); err != nil {
			return err
		}
		res.Floor, err = floorRun("throughput", hooks, func() (float64, error) {
			r := storm(ns, srv, *roundDur)
			if r == 0 {
				return 0, errors.New("a round made no connection")
			}
			return r, nil
		})
		if err != nil {
			return err
		}
	}
	var cpu, conns float64
	for _, p := range res.Pairs {
		cpu += p.AgentCPU
		conns += float64(p.AgentConn)
	}
	res.CPUPer100k = cpu / conns * 1e5
	rate := conns / (float64(len(res.Pairs)) * roundDur.Seconds())
	res.CPUPctPer10kRate = (cpu / (float64(len(res.Pairs)) * roundDur.Seconds()) * 100) / (rate / 1e4)

	// Cost at a fixed load: 40% of the maximum measured without the agent
	// (well under it: the schedule must hold in every round).
	if *costPairs > 0 {
		var withouts []float64
		for _, p := range res.Pairs {
			withouts = append(withouts, p.Without)
		}
		res.CostRate = *costRate
		if res.CostRate == 0 {
			res.CostRate = median(withouts) * 0.4
		}
		cps, err := costPairsRun(ns, srv, res.CostRate)
		if err != nil {
			return err
		}
		res.CostPairs = cps
		var cr []float64
		for _, p := range cps {
			cr = append(cr, p.Ratio)
		}
		res.CostRatio = median(cr)
		res.CostCI[0], res.CostCI[1] = bootstrapMedianCI(cr)
		if hooks != nil {
			res.CostFloor, err = floorRun("fixed-load", hooks, func() (float64, error) {
				return costRoundOnce(ns, srv, res.CostRate)
			})
			if err != nil {
				return err
			}
		}
	}

	// BPF cost: a separate round with kernel.bpf_stats_enabled=1, so the
	// throughput pairs above do not pay for the accounting.
	if err := bpfCost(ns, srv, &res); err != nil {
		return err
	}
	if *syscallPairs > 0 {
		t, err := runSyscallTax()
		if err != nil {
			return err
		}
		res.Syscall = t
	}
	if *floodDur > 0 {
		f, err := synFlood(ns, srv)
		if err != nil {
			return err
		}
		res.Flood = f
	}
	printTable(os.Stdout, &res)
	b, _ := json.MarshalIndent(res, "", "  ")
	if *jsonOut != "" {
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	fmt.Println(string(b))
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// stormSetup makes the namespaces, starts the server in them and warms
// up (first connections pay for page faults and route caches).
func stormSetup() (*netnstest.NS, *server, func(), error) {
	ns, cleanup, err := setupNetns()
	if err != nil {
		return nil, nil, nil, err
	}
	_, port, err := net.SplitHostPort(*listenAddr)
	if err != nil {
		cleanup()
		return nil, nil, nil, fmt.Errorf("-listen %q: %w", *listenAddr, err)
	}
	srv, err := startServer(ns, *listenAddr, net.JoinHostPort("10.77.0.1", port))
	if err != nil {
		cleanup()
		return nil, nil, nil, err
	}
	srv.useTUN = *clientMode == "tun" // checked in main
	// Made in every run: the BPF section measures the server side with it
	// whatever -client says (and says so when it cannot).
	if srv.tun, err = newTUNClient(ns, srv.addr, *tunWindow); err != nil {
		if srv.useTUN {
			cleanup()
			return nil, nil, nil, err
		}
		fmt.Fprintf(os.Stderr, "bench: no TUN client, the server-side BPF figure will be skipped: %v\n", err)
		srv.tun = nil
	} else {
		nsCleanup := cleanup
		cleanup = func() { srv.tun.close(); nsCleanup() }
	}
	storm(ns, srv, time.Second)
	return ns, srv, cleanup, nil
}

// setupNetns makes the bench namespace (10.77.0.1, the server) and a peer
// (10.77.0.2, the flood source) joined by a veth. SYN-ACKs to spoofed
// sources are routed to the peer, which drops them: nothing leaves the box.
func setupNetns() (*netnstest.NS, func(), error) {
	// Left over from an interrupted run: the names are fixed.
	exec.Command("ip", "netns", "del", "lwbench").Run()
	exec.Command("ip", "netns", "del", "lwbpeer").Run()
	srv, err := netnstest.Create("lwbench")
	if err != nil {
		return nil, nil, err
	}
	peer, err := netnstest.Create("lwbpeer")
	if err != nil {
		srv.Delete()
		return nil, nil, err
	}
	cleanup := func() { srv.Delete(); peer.Delete() }
	if err := netnstest.Link(srv, peer, "lwb", netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("10.77.0.2/24")); err != nil {
		cleanup()
		return nil, nil, err
	}
	return srv, cleanup, nil
}

type server struct {
	addr     string
	accepted atomic.Int64
	// The socketless client (tunclient.go), and whether the storms use
	// it (-client tun) rather than kernel sockets.
	tun    *tunClient
	useTUN bool
}

// startServer is a plain accepting server listening on listen, which the
// clients reach at addr: accept, close with RST (no TIME_WAIT pile-up over
// a long storm).
func startServer(ns *netnstest.NS, listen, addr string) (*server, error) {
	s := &server{addr: addr}
	var ln net.Listener
	err := ns.Do(func() (err error) {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp", listen)
		return err
	})
	if err != nil {
		return nil, err
	}
	for range 2 {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.accepted.Add(1)
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}()
	}
	return s, nil
}

func storm(ns *netnstest.NS, s *server, d time.Duration) float64 {
	return float64(stormCount(ns, s, d)) / d.Seconds()
}

// stormCount connects as fast as the clients can for d and returns how
// many connections the server accepted meanwhile.
func stormCount(ns *netnstest.NS, s *server, d time.Duration) int64 {
	if s.useTUN {
		s.tun.start()
		time.Sleep(200 * time.Millisecond) // ramp up
		start := s.accepted.Load()
		time.Sleep(d)
		n := s.accepted.Load() - start
		s.tun.stop()
		time.Sleep(50 * time.Millisecond) // the connections in flight end
		if err := s.tun.err(); err != nil {
			// Counted as a failed round by every caller.
			fmt.Fprintf(os.Stderr, "bench: -client tun: %v\n", err)
			return 0
		}
		return n
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each client goroutine lives inside the namespace.
			ns.Do(func() error {
				dialer := net.Dialer{Timeout: time.Second}
				for {
					select {
					case <-stop:
						return nil
					default:
					}
					connectOnce(&dialer, s.addr)
				}
			})
		}()
	}
	time.Sleep(200 * time.Millisecond) // ramp up
	start := s.accepted.Load()
	time.Sleep(d)
	n := s.accepted.Load() - start
	close(stop)
	wg.Wait()
	return n
}

type agent struct {
	cmd *exec.Cmd
}

func startAgent() (*agent, error) { return startAgentBin(*agentBin) }

// startAgentBin starts the agent binary bin with the bench's flags.
func startAgentBin(bin string, extra ...string) (*agent, error) {
	args := []string{"run", "--metrics-addr", metricsAddr, "--log-format", "json"}
	if *agentFlags != "" {
		args = append(args, strings.Fields(*agentFlags)...)
	}
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var last string
		for sc.Scan() {
			last = sc.Text()
			if strings.Contains(last, "serving metrics") {
				ready <- nil
				io.Copy(io.Discard, stderr)
				return
			}
		}
		ready <- fmt.Errorf("agent exited: %s", last)
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		return nil, errors.New("agent did not start in 20s")
	}
	return &agent{cmd: cmd}, nil
}

func (a *agent) stop() {
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.cmd.Wait()
}

// cpuSeconds is the agent's user+system CPU time, from /proc/PID/stat.
func (a *agent) cpuSeconds() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func (a *agent) status(key string) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

func (a *agent) peakRSSMiB() float64 { return a.status("VmHWM") }
func (a *agent) rssMiB() float64     { return a.status("VmRSS") }

func scrape() (map[string]*model.Sample, error) {
	// Decoded into samples keyed by "name{labels}" for easy lookups.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	vec, err := expfmt.ExtractSamples(&expfmt.DecodeOptions{Timestamp: model.Now()}, mapValues(mfs)...)
	if err != nil {
		return nil, err
	}
	out := map[string]*model.Sample{}
	for _, s := range vec {
		out[s.Metric.String()] = s
	}
	return out, nil
}

// metric sums one family's samples. A failed scrape or a family the agent
// does not export is an error: a 0 in the table would be a lie.
func (a *agent) metric(name string) (float64, error) {
	m, err := scrape()
	if err != nil {
		return 0, fmt.Errorf("scrape for %s: %w", name, err)
	}
	var (
		sum   float64
		found bool
	)
	for _, s := range m {
		if string(s.Metric[model.MetricNameLabel]) == name {
			sum += float64(s.Value)
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("the agent exports no %s", name)
	}
	return sum, nil
}

func (a *agent) modes() (string, error) {
	m, err := scrape()
	if err != nil {
		return "", fmt.Errorf("scrape for hook modes: %w", err)
	}
	var parts []string
	for _, s := range m {
		if s.Metric[model.MetricNameLabel] == "listenwatch_hook_info" {
			parts = append(parts, string(s.Metric["stage"])+"="+string(s.Metric["mode"]))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " "), nil
}

// programs are the names of the BPF programs the agent attached.
func (a *agent) programs() ([]string, error) {
	runs, err := perProgram("listenwatch_bpf_runs_total")
	if err != nil {
		return nil, err
	}
	var out []string
	for p := range runs {
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("the agent exports no BPF program")
	}
	sort.Strings(out)
	return out, nil
}

func perProgram(name string) (map[string]float64, error) {
	m, err := scrape()
	if err != nil {
		return nil, fmt.Errorf("scrape for %s: %w", name, err)
	}
	out := map[string]float64{}
	for _, s := range m {
		if string(s.Metric[model.MetricNameLabel]) == name {
			out[string(s.Metric["program"])] = float64(s.Value)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("the agent exports no %s", name)
	}
	return out, nil
}

// connectOnce makes one connection and closes it with a reset (no
// TIME_WAIT pile-up over a long run).
func connectOnce(d *net.Dialer, addr string) {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// bpfCost measures the BPF time per connection twice: with the kernel
// clients (their own sockets run the same tracepoints on this machine) and
// with the TUN client (no client socket: the server side only, what the
// target is about and what a node whose clients are elsewhere runs).
func bpfCost(ns *netnstest.NS, s *server, res *result) error {
	restore, err := enableBPFStats()
	if err != nil {
		return err
	}
	defer restore()
	defer func(v bool) { s.useTUN = v }(s.useTUN)
	s.useTUN = false
	r, rounds, err := bpfRounds(ns, s)
	if err != nil {
		return err
	}
	res.BPF, res.BPFNsPerConn, res.BPFRounds = r.programs(), r.nsPerConn(), rounds
	res.BPFFloorNsPerRun, res.BPFFloorPerConn = r.floorNsPerRun(), r.floorNsPerConn()
	if s.tun == nil {
		return nil // said at setup
	}
	s.useTUN = true
	r, rounds, err = bpfRounds(ns, s)
	if err != nil {
		return fmt.Errorf("server side (TUN client): %w", err)
	}
	res.BPFServer = &bpfFigure{Programs: r.programs(), NsPerConn: r.nsPerConn(), Rounds: rounds,
		FloorNsPerRun: r.floorNsPerRun(), FloorPerConn: r.floorNsPerConn()}
	return nil
}

// bpfRounds runs -bpf-rounds BPF rounds and returns the median one (by
// ns per connection) with every round's figure: one round in a slow
// minute of this VM read every program 30% slower (the empty program
// did not move), and a single round reported it as the figure.
func bpfRounds(ns *netnstest.NS, s *server) (bpfTotals, []float64, error) {
	var all []bpfTotals
	for i := range max(*bpfRoundsN, 1) {
		r, err := bpfRound(ns, s, *agentBin)
		if err != nil {
			return bpfTotals{}, nil, fmt.Errorf("BPF round %d: %w", i+1, err)
		}
		all = append(all, r)
	}
	m, rounds := medianRound(all)
	return m, rounds, nil
}

// medianRound is the round whose ns per connection is the median (the
// lower of the two middle ones for an even count), and every round's.
func medianRound(all []bpfTotals) (bpfTotals, []float64) {
	rounds := make([]float64, len(all))
	idx := make([]int, len(all))
	for i, r := range all {
		rounds[i], idx[i] = r.nsPerConn(), i
	}
	sort.Slice(idx, func(a, b int) bool { return rounds[idx[a]] < rounds[idx[b]] })
	return all[idx[(len(idx)-1)/2]], rounds
}

// enableBPFStats switches kernel.bpf_stats_enabled on (run time and run
// count per program) and returns what puts the old value back.
func enableBPFStats() (func(), error) {
	old, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("1"), 0); err != nil {
		return nil, err
	}
	return func() { os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", old, 0) }, nil
}

// bpfTotals is what the programs of one agent spent over some rounds.
type bpfTotals struct {
	conns float64
	secs  map[string]float64
	runs  map[string]float64
	// An empty program's runs and run time in the same rounds (the
	// meter's floor, see emptyProbe).
	emptyRuns, emptySecs float64
}

// floorNsPerRun is what bpf_stats read per run of the empty program.
func (t bpfTotals) floorNsPerRun() float64 {
	if t.emptyRuns == 0 {
		return 0
	}
	return t.emptySecs * 1e9 / t.emptyRuns
}

// floorNsPerConn is the meter's floor times the runs of all programs per
// connection: the part of nsPerConn an agent whose programs did nothing
// would still read.
func (t bpfTotals) floorNsPerConn() float64 {
	var runs float64
	for _, v := range t.runs {
		runs += v
	}
	return t.floorNsPerRun() * runs / t.conns
}

func (t *bpfTotals) add(o bpfTotals) {
	if t.secs == nil {
		t.secs, t.runs = map[string]float64{}, map[string]float64{}
	}
	t.conns += o.conns
	t.emptyRuns += o.emptyRuns
	t.emptySecs += o.emptySecs
	for k, v := range o.secs {
		t.secs[k] += v
	}
	for k, v := range o.runs {
		t.runs[k] += v
	}
}

func (t bpfTotals) programs() []progCost {
	var out []progCost
	for name, secs := range t.secs {
		runs, ns := t.runs[name], secs*1e9
		pc := progCost{Name: name, Runs: runs, NsPerConn: ns / t.conns}
		if runs > 0 {
			pc.NsPerRun = ns / runs
		}
		out = append(out, pc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// nsPerConnOf is one program's BPF time per connection.
func (t bpfTotals) nsPerConnOf(name string) float64 {
	return t.secs[name] * 1e9 / t.conns
}

func (t bpfTotals) nsPerConn() float64 {
	var ns float64
	for _, v := range t.secs {
		ns += v * 1e9
	}
	return ns / t.conns
}

// bpfRound runs the storm for one round with the agent binary bin and
// returns what its programs spent (bpf_stats must be on).
func bpfRound(ns *netnstest.NS, s *server, bin string) (bpfTotals, error) {
	ag, err := startAgentBin(bin)
	if err != nil {
		return bpfTotals{}, err
	}
	defer ag.stop()
	empty, err := attachEmptyProbe()
	if err != nil {
		return bpfTotals{}, err
	}
	defer empty.close()
	read := func() (secs, runs map[string]float64, er, es float64, err error) {
		if secs, err = perProgram("listenwatch_bpf_run_seconds_total"); err != nil {
			return
		}
		if runs, err = perProgram("listenwatch_bpf_runs_total"); err != nil {
			return
		}
		er, es, err = empty.stats()
		return
	}
	t0, r0, er0, es0, err := read()
	if err != nil {
		return bpfTotals{}, err
	}
	n := stormCount(ns, s, *roundDur)
	t1, r1, er1, es1, err := read()
	if err != nil {
		return bpfTotals{}, err
	}
	if n == 0 {
		return bpfTotals{}, errors.New("BPF cost round: no connection was made")
	}
	out := bpfTotals{conns: float64(n), secs: map[string]float64{}, runs: map[string]float64{},
		emptyRuns: er1 - er0, emptySecs: es1 - es0}
	for name := range t1 {
		out.secs[name] = t1[name] - t0[name]
		out.runs[name] = r1[name] - r0[name]
	}
	return out, nil
}

// synFlood sends spoofed SYNs from the peer namespace to the listener for
// the flood duration, while scraping the agent once a second.
func synFlood(ns *netnstest.NS, s *server) (*flood, error) {
	if _, err := exec.LookPath("hping3"); err != nil {
		return nil, errors.New("hping3 not installed (scripts/install-deps.sh)")
	}
	ag, err := startAgent()
	if err != nil {
		return nil, err
	}
	defer ag.stop()
	f := &flood{Seconds: floodDur.Seconds(), RSSStartMiB: ag.rssMiB()}
	syn0, err := ag.metric("listenwatch_listener_syns_received_total")
	if err != nil {
		return nil, err
	}
	lost0, err := ag.metric("listenwatch_ringbuf_lost_events_total")
	if err != nil {
		return nil, err
	}
	cpu0 := ag.cpuSeconds()
	_, port, _ := net.SplitHostPort(s.addr)
	host, _, _ := net.SplitHostPort(s.addr)
	cmd := exec.Command("ip", "netns", "exec", "lwbpeer", "timeout", "--signal=INT",
		strconv.Itoa(int(floodDur.Seconds())), "hping3", "-q", "-S", "-p", port, "--flood", "--rand-source", host)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-tick.C:
			if _, err := scrape(); err != nil {
				f.ScrapesFailed++
			} else {
				f.Scrapes++
			}
		}
	}
	f.CPUPercent = (ag.cpuSeconds() - cpu0) / floodDur.Seconds() * 100
	f.RSSEndMiB = ag.rssMiB()
	syn1, err := ag.metric("listenwatch_listener_syns_received_total")
	if err != nil {
		return nil, err
	}
	lost1, err := ag.metric("listenwatch_ringbuf_lost_events_total")
	if err != nil {
		return nil, err
	}
	f.SYNsSeen, f.Lost = syn1-syn0, lost1-lost0
	if f.ScrapesFailed > 0 {
		return nil, fmt.Errorf("SYN flood: %d of %d scrapes failed", f.ScrapesFailed, f.Scrapes+f.ScrapesFailed)
	}
	return f, nil
}

func printTable(w io.Writer, r *result) {
	fmt.Fprintf(w, "\nlistenwatch bench: kernel %s, %d cores, %s, %.0fs rounds, modes: %s\n\n",
		r.Kernel, r.Cores, clientDesc(), r.RoundSeconds, r.Modes)
	fmt.Fprintf(w, "%-6s %14s %14s %8s %10s %8s\n", "pair", "without conn/s", "with conn/s", "ratio", "agent cpu", "lost")
	for i, p := range r.Pairs {
		fmt.Fprintf(w, "%-6d %14.0f %14.0f %8.3f %9.2fs %8.0f\n", i+1, p.Without, p.With, p.Ratio, p.AgentCPU, p.Lost)
	}
	fmt.Fprintf(w, "throughput ratio (with/without), median of %d pairs: %.3f, 95%% CI [%.3f, %.3f]   (target >= 0.98, CI above 0.97)\n\n",
		len(r.Pairs), r.MedianRatio, r.MedianCI[0], r.MedianCI[1])
	if r.Floor != nil {
		printFloor(w, "throughput ratio", r.Floor)
	}
	if len(r.CostPairs) > 0 {
		fmt.Fprintf(w, "fixed load %.0f conn/s: machine CPU per accepted connection\n%-6s %16s %16s %8s\n", r.CostRate, "pair", "without us/conn", "with us/conn", "ratio")
		for i, p := range r.CostPairs {
			fmt.Fprintf(w, "%-6d %16.1f %16.1f %8.3f\n", i+1, p.WithoutUsPerConn, p.WithUsPerConn, p.Ratio)
		}
		fmt.Fprintf(w, "HEADLINE cost ratio (CPU per connection with/without), median of %d pairs: %.3f, 95%% CI [%.3f, %.3f]\n\n",
			len(r.CostPairs), r.CostRatio, r.CostCI[0], r.CostCI[1])
		if r.CostFloor != nil {
			printFloor(w, "cost ratio", r.CostFloor)
		}
	}
	fmt.Fprintf(w, "BPF time, clients with kernel sockets on this machine (their own transitions and packets run the programs too):\n")
	printBPFFigure(w, bpfFigure{Programs: r.BPF, NsPerConn: r.BPFNsPerConn, Rounds: r.BPFRounds, FloorNsPerRun: r.BPFFloorNsPerRun, FloorPerConn: r.BPFFloorPerConn}, "")
	if r.BPFServer != nil {
		fmt.Fprintf(w, "BPF time, server side only (TUN client: no client socket on this machine):\n")
		printBPFFigure(w, *r.BPFServer, "   (target <= 1200)")
	} else {
		fmt.Fprintf(w, "BPF time, server side only: not measured (no TUN device, see above)\n\n")
	}
	fmt.Fprintf(w, "agent CPU: %.3f s per 100k connections, %.2f%% of a core per 10k conn/s   (target <= 3%%)\n", r.CPUPer100k, r.CPUPctPer10kRate)
	fmt.Fprintf(w, "agent peak RSS: %.1f MiB   (target <= 40)   ring-buffer losses in the storm: %.0f   (target 0)\n", r.PeakRSSMiB, r.StormLost)
	if f := r.Flood; f != nil {
		fmt.Fprintf(w, "SYN flood %.0fs: %.0f SYNs seen, agent RSS %.1f -> %.1f MiB, CPU %.1f%%, lost %.0f, scrapes ok %d failed %d\n",
			f.Seconds, f.SYNsSeen, f.RSSStartMiB, f.RSSEndMiB, f.CPUPercent, f.Lost, f.Scrapes, f.ScrapesFailed)
	}
	fmt.Fprintln(w)
	if r.Syscall != nil {
		printSyscallTax(w, r.Syscall)
	}
}

// clientDesc says which clients the storms use.
func clientDesc() string {
	if *clientMode == "tun" {
		return fmt.Sprintf("TUN client (no client socket: server side only), %d in flight", *tunWindow)
	}
	return fmt.Sprintf("%d kernel clients on this machine", *clients)
}

func printBPFFigure(w io.Writer, f bpfFigure, target string) {
	fmt.Fprintf(w, "%-18s %12s %10s %10s\n", "bpf program", "runs", "ns/run", "ns/conn")
	for _, p := range f.Programs {
		fmt.Fprintf(w, "%-18s %12.0f %10.0f %10.0f\n", p.Name, p.Runs, p.NsPerRun, p.NsPerConn)
	}
	fmt.Fprintf(w, "BPF time per accepted connection: %.0f ns%s\n", f.NsPerConn, target)
	if len(f.Rounds) > 1 {
		var rs []string
		for _, v := range f.Rounds {
			rs = append(rs, fmt.Sprintf("%.0f", v))
		}
		fmt.Fprintf(w, "  the median of %d rounds (ns/conn: %s); the table is that round's\n", len(f.Rounds), strings.Join(rs, ", "))
	}
	fmt.Fprintf(w, "  of which the meter's floor: %.0f ns (an empty program read %.0f ns/run, times all programs' runs)\n\n",
		f.FloorPerConn, f.FloorNsPerRun)
}

func mapValues(m map[string]*dtoFamily) []*dtoFamily {
	out := make([]*dtoFamily, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

type dtoFamily = dto.MetricFamily
