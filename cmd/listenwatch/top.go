package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/listenwatch/listenwatch/stream"
	"github.com/listenwatch/listenwatch/views"
	"github.com/rs/zerolog"
)

const topHelp = `usage: listenwatch top [--once] [flags]

A live table (refreshed every --interval), one row per listener of the host (every network namespace), worst first:
accepted/s, SYN->accept p50 and p99 over the window, accept queue now /
backlog (and what listen() asked when net.core.somaxconn cut it), drops/s
by reason, SYN cookies/s, SYN-ACK retransmits/s, accept() EMFILE/ENFILE/s.

Keys: left/right (or < >) sort by another column, / filter by text
(listener, netns, owner; Enter keeps it, Esc clears), p or space pause,
q or Ctrl-C quit. The header says where the data comes from, the mode of
each stage and whether events were lost. --once prints one snapshot over
--interval as a plain table (or -o json) and exits, for scripts.

Data: the local agent's /api/v1/listeners when it answers (no second set
of BPF programs on a node running the DaemonSet), --agent URL to choose
one, else the tracer in-process (root needed).

examples:
  listenwatch top
  listenwatch top --once
  listenwatch top --once -o json | jq '.rows[] | select(.drops_total > 0)'
  listenwatch top --once --agent http://10.0.0.7:9810 --interval 10s

flags:
`

type topOutput struct {
	APIVersion    string        `json:"api_version"`
	Source        string        `json:"source"`
	WindowSeconds float64       `json:"window_seconds"`
	Stages        []views.Stage `json:"stages"`
	LostEvents    uint64        `json:"lost_events"` // during the window
	Rows          []views.Row   `json:"rows"`
}

// snapshotter takes snapshots from an agent or from an in-process tracer.
type snapshotter interface {
	snapshot() (views.Snapshot, error)
	source() string
	close()
}

func topMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		once     bool
		output   string
		interval time.Duration
		agent    string
		cri      string
	)
	fs.BoolVar(&once, "once", false, "print one snapshot as a plain table (or -o json) and exit")
	fs.StringVar(&output, "o", "text", "output: text or json")
	fs.DurationVar(&interval, "interval", 2*time.Second, "window over which rates and quantiles are computed")
	fs.StringVar(&agent, "agent", "", "agent to read (e.g. http://127.0.0.1:9810); none: always the in-process tracer; default: the local agent if it answers, else in-process")
	fs.StringVar(&cri, "cri-endpoint", "", "in-process only: container runtime socket for pod names (none: no names)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, topHelp)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "listenwatch top: %v (see listenwatch top -h)\n", err)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "listenwatch top: unexpected argument %q (see listenwatch top -h)\n", fs.Arg(0))
		return 2
	case !once && output != "text":
		fmt.Fprintln(stderr, "listenwatch top: -o json needs --once (see listenwatch top -h)")
		return 2
	case !once && (!isTerminal(os.Stdin) || !isTerminal(os.Stdout)):
		fmt.Fprintln(stderr, "listenwatch top: the live view needs a terminal; use --once for pipes and scripts (see listenwatch top -h)")
		return 2
	case output != "text" && output != "json":
		fmt.Fprintf(stderr, "listenwatch top: -o %q: want text or json\n", output)
		return 2
	case interval < 100*time.Millisecond:
		fmt.Fprintf(stderr, "listenwatch top: --interval %v: must be at least 100ms\n", interval)
		return 2
	}
	src, err := openSnapshotter(agent, cri)
	if err != nil {
		fmt.Fprintf(stderr, "listenwatch top: %v\n", err)
		return 1
	}
	defer src.close()
	first, err := src.snapshot()
	if err != nil {
		fmt.Fprintf(stderr, "listenwatch top: %v\n", err)
		return 1
	}
	if !once {
		if err := runTopUI(src, first, interval, stdout); err != nil {
			fmt.Fprintf(stderr, "listenwatch top: %v\n", err)
			return 1
		}
		return 0
	}
	// On stderr, so that a pipe gets only the table: scripts (and tests)
	// know the window has begun.
	fmt.Fprintf(stderr, "listenwatch top: reading %s; window of %v begun\n", src.source(), interval)
	time.Sleep(interval)
	last, err := src.snapshot()
	if err != nil {
		fmt.Fprintf(stderr, "listenwatch top: %v\n", err)
		return 1
	}
	out := topOutput{APIVersion: views.APIVersion, Source: src.source(), WindowSeconds: last.Time.Sub(first.Time).Seconds(),
		Stages: last.Stages, LostEvents: last.LostEvents - first.LostEvents, Rows: views.Rates(first, last)}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return 0
	}
	var modes []string
	for _, s := range out.Stages {
		modes = append(modes, s.Stage+"="+s.Mode)
	}
	lost := "no events lost"
	if out.LostEvents > 0 {
		lost = fmt.Sprintf("%d EVENTS LOST (ring buffer full): latencies incomplete", out.LostEvents)
	}
	fmt.Fprintf(stdout, "source: %s | window %.1fs | %s | %s\n", out.Source, out.WindowSeconds, strings.Join(modes, " "), lost)
	views.WriteTable(stdout, out.Rows)
	return 0
}

// openSnapshotter picks the data source: --agent (which must answer), else
// the local agent when it answers, else an in-process tracer.
func openSnapshotter(agent, cri string) (snapshotter, error) {
	if agent == "none" {
		return openInProcess(cri)
	}
	if agent != "" {
		a := &agentSource{url: strings.TrimSuffix(agent, "/")}
		if _, err := a.snapshot(); err != nil {
			return nil, fmt.Errorf("--agent %s: %w", agent, err)
		}
		return a, nil
	}
	local := &agentSource{url: "http://127.0.0.1" + DefaultMetricsAddr}
	if _, err := local.snapshot(); err == nil {
		return local, nil
	}
	return openInProcess(cri)
}

type agentSource struct{ url string }

func (a *agentSource) source() string { return "agent " + a.url }
func (a *agentSource) close()         {}

func (a *agentSource) snapshot() (views.Snapshot, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(a.url + "/api/v1/listeners")
	if err != nil {
		return views.Snapshot{}, unwrapURL(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return views.Snapshot{}, fmt.Errorf("%s/api/v1/listeners: %s (an agent older than the API, or not listenwatch)", a.url, resp.Status)
	}
	var s views.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("%s/api/v1/listeners: %w", a.url, err)
	}
	if s.APIVersion != views.APIVersion {
		return s, fmt.Errorf("%s speaks API %q, this listenwatch %q", a.url, s.APIVersion, views.APIVersion)
	}
	return s, nil
}

// unwrapURL shortens "Get \"http://...\": dial tcp ...: connect: connection refused".
func unwrapURL(err error) error {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i > 0 && strings.Contains(msg, "dial tcp") {
		return errors.New("no agent answers (" + msg[i+2:] + ")")
	}
	return err
}

type inProcess struct {
	tracer *loader.Tracer
	col    *exporter.Collector
	hub    *stream.Hub
	own    views.Owners
	cancel context.CancelFunc
	done   chan error
}

func openInProcess(cri string) (*inProcess, error) {
	if err := checkPrivileges(); err != nil {
		return nil, fmt.Errorf("no agent answers at %s and running the tracer here needs privileges: %w", DefaultMetricsAddr, err)
	}
	proc := procfs.FS{}
	tracer, err := loader.Open(loader.Config{Proc: proc}, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	names := pods.NewNames(proc, nil)
	if cri != "none" {
		if r, err := pods.Discover(ctx, cri, proc, 10*time.Second, zerolog.Nop()); err == nil {
			go r.Run(ctx)
			names = pods.NewNames(proc, r)
		} else if cri != "" {
			cancel()
			tracer.Close()
			return nil, fmt.Errorf("--cri-endpoint: %w", err)
		}
	}
	p := &inProcess{tracer: tracer, col: exporter.New(tracer, proc, zerolog.Nop()).WithPods(names),
		hub: &stream.Hub{}, own: owners(proc, names), cancel: cancel, done: make(chan error, 1)}
	go func() {
		p.done <- tracer.Run(ctx, func(c *events.Conn) { p.col.Observe(c); p.hub.Conn(c) }, p.hub.Drop)
	}()
	return p, nil
}

func (p *inProcess) source() string { return "in-process tracer" }

func (p *inProcess) snapshot() (views.Snapshot, error) {
	return views.Build(p.tracer, p.col, p.own, time.Now())
}

func (p *inProcess) close() {
	p.cancel()
	<-p.done
	p.tracer.Close()
}
