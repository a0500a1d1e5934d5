// Command listenwatch traces the life of TCP connections on listening
// sockets (SYN -> handshake -> accept) and serves Prometheus metrics.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/listenwatch/listenwatch/diagnose"
	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/listenwatch/listenwatch/stream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
)

// maxScrapesInFlight bounds concurrent /metrics collections.
const maxScrapesInFlight = 8

func main() {
	if len(os.Args) > 1 && os.Args[1] == "doctor" {
		os.Exit(doctorMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "top" {
		os.Exit(topMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == demoServerArg {
		os.Exit(demoServerMain())
	}
	if len(os.Args) > 1 && os.Args[1] == "demo" {
		os.Exit(demoMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == "trace" {
		os.Exit(traceMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg, err := parseArgs(os.Args[1:], os.Stdout)
	if errors.Is(err, errVersion) {
		os.Exit(0)
	}
	if errors.Is(err, errHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "listenwatch: %v\n", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "listenwatch: %v\n", err)
		os.Exit(1)
	}
}

// podNames connects to the container runtime for pod names. A configured
// endpoint that does not answer is an error; when none is configured and
// none of the usual ones answers, names are off and that is said once.
func podNames(ctx context.Context, cfg Config, log zerolog.Logger) (*pods.Names, error) {
	if cfg.CRIEndpoint == "none" {
		log.Info().Msg("pod names off (--cri-endpoint=none): listener_info carries pod UIDs only")
		return pods.NewNames(cfg.Loader.Proc, nil), nil
	}
	r, err := pods.Discover(ctx, cfg.CRIEndpoint, cfg.Loader.Proc, cfg.CRIRefreshInterval, log)
	if err != nil {
		if cfg.CRIEndpoint != "" {
			return nil, fmt.Errorf("--cri-endpoint: %w", err)
		}
		log.Info().Str("reason", err.Error()).Msg("no container runtime found: listener_info carries pod UIDs only, no pod names (set --cri-endpoint)")
		return pods.NewNames(cfg.Loader.Proc, nil), nil
	}
	log.Info().Str("endpoint", r.Endpoint).Str("runtime", r.Runtime).Msg("pod names from the container runtime")
	go r.Run(ctx)
	return pods.NewNames(cfg.Loader.Proc, r), nil
}

// run is the whole pipeline: kernel -> ring buffer -> collector -> HTTP.
func run(cfg Config) error {
	log, sampled := newLogger(cfg)
	// A scrape of a busy node writes ~20 MB of text at once; at Go's
	// default GOGC=100 the heap doubles around it (peak RSS 107 MiB with
	// 10,000 listeners: GOGC=100 make bench-scale); 50 keeps the peak at
	// 89 MiB (make bench-scale). GOGC, when set, wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	if err := checkPrivileges(); err != nil {
		return err
	}
	if err := loader.CheckBTF(loader.BTFPath); err != nil {
		return err
	}
	// Bind first: a taken port should fail before any BPF is loaded.
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics address %s: %w", cfg.MetricsAddr, unwrapOp(err))
	}
	defer ln.Close()

	tracer, err := loader.Open(cfg.Loader, log.With().Str("component", "loader").Logger())
	if err != nil {
		return err
	}
	defer tracer.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	names, err := podNames(ctx, cfg, log.With().Str("component", "cri").Logger())
	if err != nil {
		return err
	}
	collector := exporter.New(tracer, cfg.Loader.Proc, log.With().Str("component", "exporter").Logger()).WithPods(names).WithOptions(cfg.Exporter)
	doctor := diagnose.New(tracer, cfg.Loader.Proc, cfg.DiagnosisInterval, log.With().Str("component", "diagnose").Logger()).WithPods(names)
	// The collector's per-listener series (thousands of listeners on a
	// busy node) are gathered directly, the rest through the registry.
	reg := prometheus.NewRegistry()
	reg.MustRegister(doctor, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	hub := &stream.Hub{} // /api/v1/events readers
	readErr := make(chan error, 1)
	go func() {
		readErr <- tracer.Run(ctx, func(c *events.Conn) {
			collector.Observe(c)
			hub.Conn(c)
			// Checked first: building the fields would allocate per event.
			if e := sampled.Debug(); e != nil {
				tl := c.Timeline()
				e.Stringer("listener", c.Listener).Stringer("client", c.Client).Uint32("pid", c.PID).
					Dur("handshake", tl.Handshake).Dur("queue_wait", tl.QueueWait).
					Stringer("missing", tl.Missing).Msg("connection accepted")
			}
		}, hub.Drop)
	}()

	go doctor.Run(ctx)

	mux := http.NewServeMux()
	mux.Handle("/diagnosis", doctor)
	mux.Handle("/api/v1/listeners", listenersAPI(tracer, collector, owners(cfg.Loader.Proc, names), log.With().Str("component", "api").Logger()))
	mux.Handle("/api/v1/events", eventsAPI(hub, tracer, owners(cfg.Loader.Proc, names), log.With().Str("component", "api").Logger()))
	// Scrapes beyond maxScrapesInFlight wait for none: a 503, not a pile
	// of concurrent collections.
	mux.Handle(cfg.MetricsPath, collector.Handler(reg, maxScrapesInFlight, log.With().Str("component", "exporter").Logger()))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "listenwatch: metrics at %s, diagnosis at /diagnosis, JSON API v1 at /api/v1/listeners and /api/v1/events\n", cfg.MetricsPath)
	})
	srv := newHTTPServer(mux, defaultTimeouts)
	serveErr := make(chan error, 1)
	go func() { serveErr <- serveHTTP(ln, srv, cfg.WebConfigFile, log.With().Str("component", "web").Logger()) }()
	log.Info().Str("addr", ln.Addr().String()).Str("path", cfg.MetricsPath).Msg("serving metrics")

	select {
	case <-ctx.Done():
		log.Info().Msg("stopping: detaching programs")
	case err = <-readErr:
		if err != nil {
			err = fmt.Errorf("ring buffer reader: %w", err)
		}
	case err = <-serveErr:
		err = fmt.Errorf("metrics server: %w", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	return err
}
