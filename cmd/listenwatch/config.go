package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

const (
	shutdownTimeout = 5 * time.Second
	// DefaultMetricsAddr is documented in the README.
	DefaultMetricsAddr = ":9810"
)

// Config is everything the command line sets.
type Config struct {
	MetricsAddr string
	MetricsPath string
	// WebConfigFile is the exporter-toolkit web configuration (TLS, basic
	// auth); "" serves plain HTTP.
	WebConfigFile string
	LogLevel      zerolog.Level
	LogFormat     string // auto, console, json
	// DiagnosisInterval is how often drops are turned into hints.
	DiagnosisInterval time.Duration
	// CRIEndpoint is the container runtime's socket for pod names: "" tries
	// the usual paths, "none" disables names.
	CRIEndpoint        string
	CRIRefreshInterval time.Duration
	// Exporter chooses the optional families and the listeners with series.
	Exporter exporter.Options
	Loader   loader.Config
}

var (
	errHelp    = errors.New("help requested")
	errVersion = errors.New("version requested")
)

const usage = `usage: listenwatch run [flags]         the exporter (this help)
       listenwatch top [flags]         live table of listeners, worst first (top -h)
       listenwatch trace [flags]       accepted connections and drops as they happen (trace -h)
       listenwatch doctor [flags]      one-shot check of this host (doctor -h)
       listenwatch demo                30 seconds that show what listenwatch is for
       listenwatch version

Traces SYN -> handshake -> accept on every TCP listener of this host (all
network namespaces) and serves Prometheus metrics.

examples:
  listenwatch run
  listenwatch run --web.listen-address=127.0.0.1:9810 --listen-ports=80,443 --log-format=json

flags:
`

// parseArgs turns the command line into a Config. Every error is one line.
func parseArgs(args []string, out io.Writer) (Config, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) == 0 {
			return Config{}, errors.New("missing command (want: listenwatch run; listenwatch -h for help)")
		}
		fmt.Fprint(out, usage)
		fs := newFlagSet(&Config{}, new(string), new(string), new(stageList))
		fs.SetOutput(out)
		fs.PrintDefaults()
		return Config{}, errHelp
	}
	if args[0] == "version" || args[0] == "--version" || args[0] == "-version" {
		if len(args) > 1 {
			return Config{}, fmt.Errorf("version takes no arguments (got %q)", args[1])
		}
		printVersion(out)
		return Config{}, errVersion
	}
	if args[0] != "run" {
		return Config{}, fmt.Errorf("unknown command %q (want: listenwatch run, top, trace, doctor, demo or version)", args[0])
	}
	var (
		cfg         Config
		level, mode string
		disabled    stageList
	)
	fs := newFlagSet(&cfg, &level, &mode, &disabled)
	fs.SetOutput(io.Discard) // errors are printed once, by main
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(out, usage)
			fs.SetOutput(out)
			fs.PrintDefaults()
			return cfg, errHelp
		}
		return cfg, fmt.Errorf("%v (see listenwatch run -h)", err)
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (see listenwatch run -h)", fs.Arg(0))
	}
	var err error
	if cfg.LogLevel, err = zerolog.ParseLevel(level); err != nil || level == "" {
		return cfg, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", level)
	}
	switch cfg.LogFormat {
	case "auto", "console", "json":
	default:
		return cfg, fmt.Errorf("--log-format %q: want auto, console or json", cfg.LogFormat)
	}
	if cfg.Loader.Mode, err = events.ParseMode(mode); err != nil {
		return cfg, fmt.Errorf("--hook-mode: %v", err)
	}
	cfg.Loader.Disabled = disabled
	if _, _, err := net.SplitHostPort(cfg.MetricsAddr); err != nil {
		return cfg, fmt.Errorf("--web.listen-address %q: %v", cfg.MetricsAddr, err)
	}
	if !strings.HasPrefix(cfg.MetricsPath, "/") {
		return cfg, fmt.Errorf("--web.telemetry-path %q: must start with /", cfg.MetricsPath)
	}
	if err := web.Validate(cfg.WebConfigFile); err != nil {
		return cfg, fmt.Errorf("--web.config.file %s: %s", cfg.WebConfigFile, strings.Join(strings.Fields(err.Error()), " "))
	}
	if cfg.DiagnosisInterval < time.Second {
		return cfg, fmt.Errorf("--diagnosis-interval %v: must be at least 1s", cfg.DiagnosisInterval)
	}
	if f := cfg.Exporter.Filter; (f.IncludeNamespaces != nil || f.ExcludeNamespaces != nil) && cfg.CRIEndpoint == "none" {
		return cfg, errors.New("--include-namespaces/--exclude-namespaces need pod names: remove --cri-endpoint=none")
	}
	if cfg.CRIRefreshInterval < time.Second {
		return cfg, fmt.Errorf("--cri-refresh-interval %v: must be at least 1s", cfg.CRIRefreshInterval)
	}
	if err := cfg.Loader.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func newFlagSet(cfg *Config, level, mode *string, disabled *stageList) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&cfg.MetricsAddr, "web.listen-address", DefaultMetricsAddr, "address to serve metrics, /diagnosis and /healthz on")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", DefaultMetricsAddr, "the same as --web.listen-address (older name)")
	fs.StringVar(&cfg.MetricsPath, "web.telemetry-path", "/metrics", "HTTP path of the metrics")
	fs.StringVar(&cfg.MetricsPath, "metrics-path", "/metrics", "the same as --web.telemetry-path (older name)")
	fs.StringVar(&cfg.WebConfigFile, "web.config.file", "", "exporter-toolkit web configuration: TLS and basic auth, as node_exporter's (empty: plain HTTP)")
	fs.StringVar(level, "log-level", "info", "trace, debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "auto", "auto (console on a terminal, else JSON), console or json")
	fs.StringVar(mode, "hook-mode", string(events.ModeAuto), "how to attach every stage: "+events.ModesNames()+"; a forced mode that cannot attach is an error")
	fs.Var(disabled, "disable-stage", "do not attach this stage: "+events.StageNames()+" (comma-separated or repeated)")
	fs.Func("ringbuf-size", "ring buffer size in bytes, a power of two (default 1048576)", uintFlag(&cfg.Loader.RingbufSize))
	fs.Func("conn-table-size", "connections tracked between handshake and accept, LRU (default 32768)", uintFlag(&cfg.Loader.ConnTableSize))
	fs.Func("listener-table-size", "listeners tracked, LRU (default 16384)", uintFlag(&cfg.Loader.ListenerTableSize))
	fs.DurationVar(&cfg.DiagnosisInterval, "diagnosis-interval", time.Minute, "how often drops and accept failures are turned into a logged cause and knob (also at /diagnosis)")
	fs.Func("path.procfs", "where the host's /proc is mounted (a DaemonSet mounts it at e.g. /host/proc) (default /proc)", func(v string) error {
		if st, err := os.Stat(v); err != nil || !st.IsDir() {
			return fmt.Errorf("not a directory")
		}
		if _, err := os.Stat(filepath.Join(v, "self", "status")); err != nil {
			return fmt.Errorf("no procfs there (%s/self/status missing)", v)
		}
		cfg.Loader.Proc = procfs.New(v)
		return nil
	})
	fs.StringVar(&cfg.CRIEndpoint, "cri-endpoint", "", "container runtime (CRI) socket for pod, namespace and container names, e.g. unix:///run/containerd/containerd.sock; empty: the first of containerd, CRI-O, k3s, k0s, microk8s, cri-dockerd that answers; none: no names (pod UIDs only)")
	fs.DurationVar(&cfg.CRIRefreshInterval, "cri-refresh-interval", 10*time.Second, "how often the runtime's container and sandbox lists are read (a new container is also looked up within a second of being seen)")
	fs.BoolVar(&cfg.Exporter.LatencySplit, "metrics.latency-split", false, "also export the handshake-duration and accept-queue-wait histograms (+30 series per listener; their sums are exported either way)")
	fs.BoolVar(&cfg.Exporter.QueueLengthHistogram, "metrics.queue-length-histogram", false, "also export the accept-queue length at each connection as a histogram (+21 series per listener)")
	fs.Func("listen-ports", "export series only for listeners on these ports, e.g. 80,443,8000-8100 (default: all)", func(v string) error {
		p, err := exporter.ParsePorts(v)
		cfg.Exporter.Filter.Ports = p
		return err
	})
	fs.Func("include-namespaces", "export series only for listeners of pods in Kubernetes namespaces matching this regexp (anchored; \"\" matches listeners outside pods)", func(v string) error {
		re, err := exporter.ParseNamespaces(v)
		cfg.Exporter.Filter.IncludeNamespaces = re
		return err
	})
	fs.Func("exclude-namespaces", "no series for listeners of pods in Kubernetes namespaces matching this regexp (anchored), e.g. kube-system|monitoring", func(v string) error {
		re, err := exporter.ParseNamespaces(v)
		cfg.Exporter.Filter.ExcludeNamespaces = re
		return err
	})
	fs.DurationVar(&cfg.Loader.ClosedRetention, "closed-listener-retention", loader.DefaultClosedRetention, "how long a closed listener's final counters stay exported before it is forgotten")
	fs.DurationVar(&cfg.Loader.PollInterval, "poll-interval", loader.DefaultPollInterval, "how often the ring buffer is drained when the kernel has not woken the reader")
	return fs
}

func uintFlag(p *uint32) func(string) error {
	return func(s string) error {
		v, err := strconv.ParseUint(s, 0, 32)
		if err != nil || v == 0 {
			return fmt.Errorf("want a positive integer")
		}
		*p = uint32(v)
		return nil
	}
}

type stageList []events.Stage

func (s *stageList) String() string { return fmt.Sprint(*s) }
func (s *stageList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		st, err := events.ParseStage(part)
		if err != nil {
			return err
		}
		*s = append(*s, st)
	}
	return nil
}

// newLogger builds the one logger of the process; components get children
// of it. sampled is for per-connection lines, which must not flood.
func newLogger(cfg Config) (log, sampled zerolog.Logger) {
	zerolog.DurationFieldUnit = time.Second
	zerolog.DurationFieldInteger = false
	var w io.Writer = os.Stderr
	isTTY := func() bool { _, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS); return err == nil }
	if cfg.LogFormat == "console" || (cfg.LogFormat == "auto" && isTTY()) {
		w = zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.RFC3339}
	}
	log = zerolog.New(w).Level(cfg.LogLevel).With().Timestamp().Logger()
	sampled = log.Sample(&zerolog.BurstSampler{Burst: 10, Period: time.Second})
	return log, sampled
}

// checkPrivileges fails early, in one line, when a capability the agent
// needs is missing. LISTENWATCH_SKIP_PRIVILEGE_CHECK=1 runs anyway (each
// missing capability then shows as what it breaks: the least-privilege
// test proves the set that way).
func checkPrivileges() error {
	if os.Getenv("LISTENWATCH_SKIP_PRIVILEGE_CHECK") == "1" {
		return nil
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil // let the loader report the real failure
	}
	return loader.CheckPrivileges(string(b))
}

// unwrapOp turns "listen tcp :9810: bind: address already in use" into
// its last part: the address is already in the message.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
