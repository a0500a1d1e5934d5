package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/stream"
	"github.com/listenwatch/listenwatch/views"
)

const traceHelp = `usage: listenwatch trace [flags]

One line per accepted connection (time, listener, client, owner, handshake
time, accept-queue wait, SYN->accept) and per drop (time, listener, client
when known, reason). Drop records are rate-limited in the kernel to %d per
listener per second, so a flood costs little; the drops over that limit are
still counted exactly and printed once a second as
  … 48,211 more accept_queue_full_syn drops on 10.0.0.5:8080 (...)
If this terminal cannot keep up, lines are dropped (never buffered without
bound) and how many is printed.

Data: the local agent's /api/v1/events when it answers, --agent URL to
choose one, else the tracer in-process (root needed).

examples:
  listenwatch trace --drops-only
  listenwatch trace --port 8080 --min-wait 100ms
  listenwatch trace --pod shop/web-0 -o json | jq 'select(.type=="drop")'

flags:
`

// traceQueue is how many records a trace reader may fall behind by before
// records are counted as lost instead.
const traceQueue = 4096

func traceMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		f        stream.Filter
		port     uint
		addr     string
		netns    uint
		output   string
		agent    string
		cri      string
		duration time.Duration
	)
	fs.UintVar(&port, "port", 0, "only this listener port")
	fs.StringVar(&addr, "addr", "", "only this address (the listener's or the client's)")
	fs.UintVar(&netns, "netns", 0, "only this network namespace (inode, as in /proc/PID/ns/net)")
	fs.StringVar(&f.Pod, "pod", "", "only listeners of this pod: namespace/name or name (pod names must be known)")
	fs.DurationVar(&f.MinWait, "min-wait", 0, "only connections that waited at least this long in the accept queue (drops are kept)")
	fs.BoolVar(&f.DropsOnly, "drops-only", false, "only drops")
	fs.StringVar(&output, "o", "text", "output: text, or json (one object per line)")
	fs.StringVar(&agent, "agent", "", "agent to read (e.g. http://127.0.0.1:9810); none: always the in-process tracer; default: the local agent if it answers, else in-process")
	fs.StringVar(&cri, "cri-endpoint", "", "in-process only: container runtime socket for pod names (none: no names)")
	fs.DurationVar(&duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, traceHelp, events.DropRecordsPerSecond)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "listenwatch trace: %v (see listenwatch trace -h)\n", err)
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "listenwatch trace: "+format+" (see listenwatch trace -h)\n", a...)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return usage("unexpected argument %q", fs.Arg(0))
	case output != "text" && output != "json":
		return usage("-o %q: want text or json", output)
	case port > 65535:
		return usage("--port %d: not a port", port)
	case netns > 1<<32-1:
		return usage("--netns %d: not a namespace inode", netns)
	case f.MinWait < 0 || duration < 0:
		return usage("--min-wait and --duration cannot be negative")
	}
	f.Port, f.Netns = uint16(port), uint32(netns)
	if addr != "" {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return usage("--addr %q: not an IP address", addr)
		}
		f.Addr = a.Unmap()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	w := bufio.NewWriter(stdout)
	defer w.Flush()
	enc := json.NewEncoder(w)
	emit := func(e *stream.Event) error {
		var err error
		if output == "json" {
			err = enc.Encode(e)
		} else {
			err = e.WriteText(w)
		}
		if err == nil {
			err = w.Flush()
		}
		return err
	}

	if agent != "none" {
		url := strings.TrimSuffix(agent, "/")
		if url == "" {
			url = "http://127.0.0.1" + DefaultMetricsAddr
		}
		snap, err := (&agentSource{url: url}).snapshot()
		switch {
		case err == nil:
			begun := func() {
				fmt.Fprintf(stderr, "listenwatch trace: reading agent %s (%s); Ctrl-C to stop\n", url, stagesLine(snap.Stages, snap.LostEvents))
			}
			// The agent ends the stream after duration itself.
			if err := traceAgent(ctx, url, f, duration, begun, emit); err != nil {
				fmt.Fprintf(stderr, "listenwatch trace: %v\n", err)
				return 1
			}
			return 0
		case agent != "":
			fmt.Fprintf(stderr, "listenwatch trace: --agent %s: %v\n", agent, err)
			return 1
		}
	}
	p, err := openInProcess(cri)
	if err != nil {
		fmt.Fprintf(stderr, "listenwatch trace: %v\n", err)
		return 1
	}
	defer p.close()
	sess, err := p.hub.Open(f, traceQueue, p.tracer, p.own)
	if err != nil {
		fmt.Fprintf(stderr, "listenwatch trace: %v\n", err)
		return 1
	}
	defer sess.Close()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	snap, _ := p.snapshot()
	fmt.Fprintf(stderr, "listenwatch trace: reading the in-process tracer (%s); Ctrl-C to stop\n", stagesLine(snap.Stages, snap.LostEvents))
	if err := sess.Run(ctx, emit); err != nil && !errors.Is(err, syscall.EPIPE) {
		fmt.Fprintf(stderr, "listenwatch trace: %v\n", err)
		return 1
	}
	return 0
}

func stagesLine(stages []views.Stage, lost uint64) string {
	var modes []string
	for _, s := range stages {
		modes = append(modes, s.Stage+"="+s.Mode)
	}
	l := "no events lost"
	if lost > 0 {
		l = fmt.Sprintf("%d events lost since start", lost)
	}
	return strings.Join(modes, " ") + ", " + l
}

// traceAgent reads the agent's event stream until ctx ends or, with a
// duration, until the agent ends it after its last summary (so that the
// suppressed counts of the last second are not lost).
func traceAgent(ctx context.Context, url string, f stream.Filter, duration time.Duration, begun func(), emit func(*stream.Event) error) error {
	q := f.Query()
	if duration > 0 {
		q.Set("duration", duration.String())
	}
	u := url + "/api/v1/events"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return unwrapURL(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s/api/v1/events: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	begun() // the agent's session is open: what happens from here is in the stream
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e stream.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("event stream: %w", err)
		}
		if err := emit(&e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("event stream: %w", err)
	}
	return nil
}
