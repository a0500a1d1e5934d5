package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/monitoring"
	"golang.org/x/sys/unix"
)

// promServer is a real Prometheus (Debian's package) with a private
// configuration and data directory.
type promServer struct {
	url string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startPrometheus scrapes target every second and evaluates rules every
// second. The shipped rules are loaded with their for: durations cut to
// 5s (promtool's unit tests cover the real ones); everything else as
// shipped.
func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus missing (Debian's prometheus package; scripts/install-deps.sh installs it): the dashboard and alerts cannot be evaluated")
	}
	dir := t.TempDir()
	rules, err := monitoring.RulesYAML()
	if err != nil {
		t.Fatal(err)
	}
	short := regexp.MustCompile(`(?m)^(\s+for: ).*$`).ReplaceAll(rules, []byte("${1}5s"))
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), short, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
- job_name: listenwatch
  static_configs:
  - targets: [%q]
    labels: {cluster: test}
`, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &promServer{url: "http://" + addr}
	eventually(t, settle, func() (bool, string) {
		_, err := get(p.url + "/-/ready")
		return err == nil, fmt.Sprintf("prometheus not ready: %v; log: %s", err, logs.String())
	})
	return p
}

type promResult struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

// queryRange evaluates expr over [from, now] at a 1 s step.
func (p *promServer) queryRange(expr string, from time.Time) ([]promResult, error) {
	q := url.Values{"query": {expr}, "start": {strconv.FormatInt(from.Unix(), 10)},
		"end": {strconv.FormatInt(time.Now().Unix(), 10)}, "step": {"1"}}
	resp, err := http.Get(p.url + "/api/v1/query_range?" + q.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []promResult `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s", r.Error)
	}
	return r.Data.Result, nil
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p *promServer) alerts(t *testing.T) []promAlert {
	t.Helper()
	body, err := get(p.url + "/api/v1/alerts")
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Data struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	return r.Data.Alerts
}

// substitute fills in the dashboard's variables as a user selecting this
// agent and "All" elsewhere would.
func substitute(expr, instance string) string {
	return strings.NewReplacer(
		"$__rate_interval", "10s",
		"$cluster", "test",
		"$job", "listenwatch",
		// Grafana escapes a regex value inside the PromQL string: \\.
		"$instance", strings.ReplaceAll(regexp.QuoteMeta(instance), `\`, `\\`),
		"$namespace", ".*",
		"$pod", ".*",
		"$listener", ".*",
	).Replace(expr)
}

// TestDashboardAndAlertsInPrometheus: the agent scraped by a real
// Prometheus with the shipped rules, while listeners in namespaces
// overflow (slowly accepting, so also SYN cookies and long waits), are
// flooded with spoofed SYNs (cookies, SYN queue), run out of fds
// (EMFILE), and one stays healthy. Every query of every panel of the
// generated dashboard evaluates without error and returns series; the
// overflow alert fires for the overflowing listener, and no alert names
// the healthy one.
func TestDashboardAndAlertsInPrometheus(t *testing.T) {
	need(t, events.StageSYN, events.StageHandshake, events.StageAccept, events.StageAcceptErrors)
	bin := buildAgent(t)
	agent := startAgent(t, bin, "--metrics.latency-split", "--metrics.queue-length-histogram", "--diagnosis-interval", "2s")
	prom := startPrometheus(t, agent)
	start := time.Now()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	every := func(d time.Duration, f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				f()
				select {
				case <-stop:
					return
				case <-time.After(d):
				}
			}
		}()
	}

	// A slow server that overflows: backlog 8, one accept() per 100 ms,
	// bursts of 60 clients every 2 s.
	slowNS := newNS(t)
	slow := netip.MustParseAddrPort("127.0.0.1:8901")
	sfd := listen(t, slowNS, slow, 8)
	every(100*time.Millisecond, func() {
		if _, _, nfd, err := acceptOne(sfd); err == nil {
			unix.Close(nfd)
		}
	})
	unix.SetNonblock(sfd, true)
	every(2*time.Second, func() {
		fds := connectNonBlocking(t, slowNS, slow, 60)
		time.AfterFunc(1500*time.Millisecond, func() { closeAll(fds) })
	})

	// A healthy server beside it: accepts at once.
	healthy := netip.MustParseAddrPort("127.0.0.1:8902")
	hfd := listen(t, slowNS, healthy, 128)
	every(200*time.Millisecond, func() {
		c, _, err := dial(slowNS, healthy)
		if err != nil {
			return
		}
		if _, _, nfd, err := acceptOne(hfd); err == nil {
			unix.Close(nfd)
		}
		c.Close()
	})

	// A SYN flood with cookies on: the SYN queue fills.
	server, peer := floodPair(t)
	flooded := netip.MustParseAddrPort("10.88.0.1:8903")
	listen(t, server, flooded, 8)
	wg.Add(1)
	go func() { defer wg.Done(); hping(t, peer, flooded, 3000) }()

	// A server out of file descriptors.
	emfNS := newNS(t)
	emf := netip.MustParseAddrPort("127.0.0.1:8904")
	helper := exec.Command("ip", "netns", "exec", emfNS.Name, os.Args[0], "-test.run=^TestHelperEMFILEServer$")
	helper.Env = append(os.Environ(), "LW_EMFILE_SERVER="+emf.String())
	out, _ := helper.StdoutPipe()
	stdin, _ := helper.StdinPipe()
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); helper.Process.Kill(); helper.Wait() }()
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "ready ") {
	}
	emfClients := connectNonBlocking(t, emfNS, emf, 50)
	defer closeAll(emfClients)

	// The overflow alert fires for the overflowing listener, with its
	// labels (and its owner's pod labels, empty here: no runtime).
	slowPort := strconv.Itoa(int(slow.Port()))
	eventually(t, time.Minute, func() (bool, string) {
		for _, a := range prom.alerts(t) {
			if a.Labels["alertname"] == "ListenwatchAcceptQueueOverflow" && a.State == "firing" &&
				a.Labels["port"] == slowPort && a.Labels["netns"] == strconv.FormatUint(uint64(slowNS.Inode), 10) &&
				a.Labels["instance"] == agent && a.Labels["addr"] == "127.0.0.1" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no firing ListenwatchAcceptQueueOverflow for :%s yet: %+v", slowPort, prom.alerts(t))
	})
	// Let every scenario show in a few scrapes and rule evaluations.
	time.Sleep(5 * time.Second)

	healthyPort := strconv.Itoa(int(healthy.Port()))
	fired := map[string]bool{}
	for _, a := range prom.alerts(t) {
		fired[a.Labels["alertname"]+" :"+a.Labels["port"]+" "+a.State] = true
		if a.Labels["port"] == healthyPort && a.Labels["netns"] == strconv.FormatUint(uint64(slowNS.Inode), 10) {
			t.Errorf("an alert names the healthy listener: %+v", a)
		}
		switch a.Labels["alertname"] {
		case "ListenwatchAgentDown", "ListenwatchStageDegraded", "ListenwatchLostEvents":
			t.Errorf("agent alert with a healthy agent: %+v", a)
		}
	}
	t.Logf("alerts: %v", fired)

	dash, err := monitoring.DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	panels, err := monitoring.Panels(dash)
	if err != nil {
		t.Fatal(err)
	}
	queries := 0
	for _, p := range panels {
		for _, q := range p.Queries {
			queries++
			expr := substitute(q, agent)
			res, err := prom.queryRange(expr, start)
			switch {
			case err != nil:
				t.Errorf("%s / %q: %v\n%s", p.Row, p.Title, err, expr)
			case len(res) == 0:
				t.Errorf("%s / %q: no series\n%s", p.Row, p.Title, expr)
			}
		}
	}
	t.Logf("%d panels, %d queries evaluated", len(panels), queries)

	// The README's picture: the key panels drawn from the same queries
	// (LISTENWATCH_DASHBOARD_PNG=path keeps it; make dashboard-image).
	png := filepath.Join(t.TempDir(), "dashboard.png")
	if p := os.Getenv("LISTENWATCH_DASHBOARD_PNG"); p != "" {
		png = p
	}
	ports := map[string]bool{}
	for _, a := range []netip.AddrPort{slow, healthy, flooded, emf} {
		ports[strconv.Itoa(int(a.Port()))] = true
	}
	renderDashboard(t, prom, agent, start, ports, png)
	if st, err := os.Stat(png); err != nil || st.Size() < 10000 {
		t.Errorf("rendering %s: %v", png, err)
	}
}
