package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/rs/zerolog"
)

func TestParseArgsDefaults(t *testing.T) {
	cfg, err := parseArgs([]string{"run"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MetricsAddr != ":9810" || cfg.MetricsPath != "/metrics" || cfg.LogLevel != zerolog.InfoLevel ||
		cfg.Loader.Mode != events.ModeAuto || cfg.Loader.PollInterval != loader.DefaultPollInterval {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestParseArgsSettings(t *testing.T) {
	cfg, err := parseArgs([]string{"run", "--hook-mode=tracepoint", "--disable-stage=syn,accept",
		"--ringbuf-size=65536", "--log-level=debug", "--metrics-addr=127.0.0.1:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Loader.Mode != events.ModeTracepoint || len(cfg.Loader.Disabled) != 2 || cfg.Loader.RingbufSize != 65536 ||
		cfg.LogLevel != zerolog.DebugLevel || cfg.MetricsAddr != "127.0.0.1:0" {
		t.Fatalf("settings ignored: %+v", cfg)
	}
}

func TestParseArgsExporterOptions(t *testing.T) {
	cfg, err := parseArgs([]string{"run", "--metrics.latency-split", "--metrics.queue-length-histogram",
		"--listen-ports=80,8000-8100", "--exclude-namespaces=kube-.*", "--cri-endpoint=unix:///run/x.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Exporter
	if !o.LatencySplit || !o.QueueLengthHistogram || len(o.Filter.Ports) != 2 || o.Filter.ExcludeNamespaces == nil ||
		!o.Filter.ExcludeNamespaces.MatchString("kube-system") || o.Filter.ExcludeNamespaces.MatchString("shop") ||
		cfg.CRIEndpoint != "unix:///run/x.sock" {
		t.Fatalf("settings ignored: %+v", cfg)
	}
	def, err := parseArgs([]string{"run"}, io.Discard)
	if err != nil || def.Exporter.LatencySplit || def.Exporter.QueueLengthHistogram || def.CRIEndpoint != "" {
		t.Fatalf("defaults: %+v %v", def.Exporter, err)
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"serve"},
		{"run", "--bogus"},
		{"run", "--hook-mode=fast"},
		{"run", "--disable-stage=registry"},
		{"run", "--ringbuf-size=5000"},
		{"run", "--ringbuf-size=-1"},
		{"run", "--log-level=loud"},
		{"run", "--log-format=xml"},
		{"run", "--metrics-addr=9810"},
		{"run", "--metrics-path=metrics"},
		{"run", "extra"},
		{"run", "--listen-ports=0"},
		{"run", "--listen-ports=90-80"},
		{"run", "--include-namespaces=("},
		{"run", "--exclude-namespaces=kube-system", "--cri-endpoint=none"},
		{"run", "--cri-refresh-interval=10ms"},
		{"version", "extra"},
	} {
		if _, err := parseArgs(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error is not one line: %q", args, err)
		}
	}
}

// TestExitCodes runs the built command: one line on stderr, non-zero exit.
func TestExitCodes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "listenwatch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"run", "--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"doctor", "--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"doctor", "-o", "yaml"}, 2, `-o "yaml": want text or json`},
		{[]string{"version", "x"}, 2, "version takes no arguments"},
		{[]string{"run", "--metrics-addr", busy.Addr().String()}, 1, "address already in use"},
	}
	if os.Geteuid() != 0 {
		cases = cases[:5]
	}
	for _, c := range cases {
		cmd := exec.Command(bin, c.args...)
		out, err := cmd.CombinedOutput()
		code := cmd.ProcessState.ExitCode()
		if err == nil || code != c.code {
			t.Errorf("%v: exit %d, want %d", c.args, code, c.code)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], c.want) {
			t.Errorf("%v: output %q, want one line with %q", c.args, out, c.want)
		}
	}
}

// Every command's -h shows an example and exits 0.
func TestHelpShowsExamples(t *testing.T) {
	var run strings.Builder
	if _, err := parseArgs([]string{"run", "-h"}, &run); err != errHelp || !strings.Contains(run.String(), "examples:") {
		t.Errorf("run -h: %v\n%s", err, run.String())
	}
	var out strings.Builder
	if code := doctorMain([]string{"-h"}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "examples:") || !strings.Contains(out.String(), "listenwatch doctor --netns") {
		t.Errorf("doctor -h: exit %d\n%s", code, out.String())
	}
	for name, main := range map[string]func([]string, io.Writer, io.Writer) int{"top": topMain, "trace": traceMain, "demo": demoMain} {
		var out strings.Builder
		if code := main([]string{"-h"}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "examples:\n  listenwatch "+name) &&
			!strings.Contains(out.String(), "examples:\n  sudo listenwatch "+name) {
			t.Errorf("%s -h: exit %d\n%s", name, code, out.String())
		}
	}
}

func TestNoBTFIsOneClearLine(t *testing.T) {
	err := loader.CheckBTF(filepath.Join(t.TempDir(), "vmlinux"))
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "CONFIG_DEBUG_INFO_BTF") {
		t.Fatalf("got %v", err)
	}
	if err := loader.CheckBTF(loader.BTFPath); err != nil {
		t.Skipf("this kernel has no BTF: %v", err)
	}
}
