package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/listenwatch/listenwatch/diagnose"
	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/loader"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/rs/zerolog"
)

const doctorHelp = `usage: listenwatch doctor [flags]

A one-shot check of this host, before a deploy or during an incident: the
kernel, BTF, the mode each stage runs in (and why better ones cannot), the
relevant sysctls of each network namespace with listeners, and the
listeners at risk now (backlog capped by net.core.somaxconn, accept queue
above half its backlog, owner above 80% of its file-descriptor limit),
each with the knob to turn. Exit status: 0 nothing at risk, 1 something
is, 2 usage error (or the check could not run).

examples:
  listenwatch doctor
  listenwatch doctor --netns lwdemo -o json | jq .risks

flags:
`

// Exit statuses of doctor.
const (
	doctorOK    = 0
	doctorRisk  = 1
	doctorUsage = 2
)

type doctorReport struct {
	Kernel     string           `json:"kernel"`
	BTF        bool             `json:"btf"`
	Stages     []doctorStage    `json:"stages"`
	Namespaces []doctorNetns    `json:"namespaces"`
	Risks      []doctorRiskJSON `json:"risks"`
}

type doctorStage struct {
	Stage  string `json:"stage"`
	Mode   string `json:"mode"`
	Reason string `json:"reason,omitempty"` // why not a better mode, or why none
	// NodeCost: what the mode costs every task on the node, when notable.
	NodeCost string `json:"node_cost,omitempty"`
}

type doctorNetns struct {
	Netns              uint32 `json:"netns"`
	Listeners          int    `json:"listeners"`
	Somaxconn          int64  `json:"somaxconn"`
	TCPMaxSynBacklog   int64  `json:"tcp_max_syn_backlog"`
	TCPSyncookies      int64  `json:"tcp_syncookies"`
	TCPAbortOnOverflow int64  `json:"tcp_abort_on_overflow"`
}

type doctorRiskJSON struct {
	Netns uint32 `json:"netns"`
	Addr  string `json:"addr"`
	Port  uint16 `json:"port"`
	diagnose.Risk
}

// doctorMain runs `listenwatch doctor`; it returns the exit status.
func doctorMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		output   string
		netnss   []string
		procRoot string
		cri      string
	)
	fs.StringVar(&output, "o", "text", "output: text or json")
	fs.Func("netns", "check only this network namespace: a name under /run/netns or an inode number (repeatable)", func(v string) error {
		netnss = append(netnss, v)
		return nil
	})
	fs.StringVar(&procRoot, "path.procfs", procfs.DefaultRoot, "where the host's /proc is mounted")
	fs.StringVar(&cri, "cri-endpoint", "", "container runtime socket for pod names (empty: the usual ones; none: no names)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, doctorHelp)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return doctorOK
		}
		fmt.Fprintf(stderr, "listenwatch doctor: %v (see listenwatch doctor -h)\n", err)
		return doctorUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "listenwatch doctor: unexpected argument %q (see listenwatch doctor -h)\n", fs.Arg(0))
		return doctorUsage
	}
	if output != "text" && output != "json" {
		fmt.Fprintf(stderr, "listenwatch doctor: -o %q: want text or json\n", output)
		return doctorUsage
	}
	only := map[uint32]bool{}
	for _, n := range netnss {
		ino, err := netnsInode(n)
		if err != nil {
			fmt.Fprintf(stderr, "listenwatch doctor: --netns %s: %v\n", n, err)
			return doctorUsage
		}
		only[ino] = true
	}
	proc := procfs.New(procRoot)
	rep, risks, err := doctorCheck(proc, only, cri)
	if err != nil {
		fmt.Fprintf(stderr, "listenwatch doctor: %v\n", err)
		return doctorUsage
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printDoctor(stdout, rep)
	}
	if risks > 0 {
		return doctorRisk
	}
	return doctorOK
}

// netnsInode resolves a namespace name (under /run/netns) or inode.
func netnsInode(v string) (uint32, error) {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return uint32(n), nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+v, &st); err != nil {
		return 0, fmt.Errorf("no such named namespace (/run/netns/%s) and not an inode number", v)
	}
	return uint32(st.Ino), nil
}

func doctorCheck(proc procfs.FS, only map[uint32]bool, cri string) (doctorReport, int, error) {
	rep := doctorReport{Kernel: loader.KernelRelease(), BTF: loader.CheckBTF(loader.BTFPath) == nil}
	if err := checkPrivileges(); err != nil {
		return rep, 0, err
	}
	if !rep.BTF {
		return rep, 0, loader.CheckBTF(loader.BTFPath)
	}
	// The loader's own attach decisions, silenced: the report says them.
	tracer, err := loader.Open(loader.Config{Proc: proc}, zerolog.Nop())
	if err != nil {
		return rep, 0, err
	}
	defer tracer.Close()
	for _, h := range tracer.Hooks() {
		st := doctorStage{Stage: string(h.Stage), Mode: string(h.Mode), NodeCost: h.NodeCost}
		if h.Err != nil {
			st.Reason = h.Err.Error()
		}
		rep.Stages = append(rep.Stages, st)
	}
	ls, err := tracer.Listeners()
	if err != nil {
		return rep, 0, fmt.Errorf("read listeners: %w", err)
	}
	var open []events.Listener
	count := map[uint32]int{}
	for _, l := range ls {
		if l.Sockets <= 0 || (len(only) > 0 && !only[l.Key.Netns]) {
			continue
		}
		open = append(open, l)
		count[l.Key.Netns]++
	}
	var names *pods.Names
	if cri != "none" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if r, err := pods.Discover(ctx, cri, proc, time.Minute, zerolog.Nop()); err == nil {
			if r.Refresh(ctx) == nil {
				names = pods.NewNames(proc, r)
			}
		} else if cri != "" {
			cancel()
			return rep, 0, fmt.Errorf("--cri-endpoint: %w", err)
		}
		cancel()
	}
	settings := map[uint32]diagnose.Settings{}
	for ino := range count {
		settings[ino] = diagnose.ReadSettings(proc, ino)
	}
	procs := map[uint32]diagnose.Process{}
	who := map[uint32]string{}
	for _, l := range open {
		if _, ok := procs[l.PID]; !ok && l.PID != 0 {
			procs[l.PID] = diagnose.ReadProcess(proc, l.PID)
			if p := names.Of(l.PID); p.Name != "" {
				who[l.PID] = "pod " + p.Namespace + "/" + p.Name
			}
		}
	}
	for ino, n := range count {
		s := settings[ino]
		rep.Namespaces = append(rep.Namespaces, doctorNetns{Netns: ino, Listeners: n, Somaxconn: s.Somaxconn,
			TCPMaxSynBacklog: s.MaxSynBacklog, TCPSyncookies: s.Syncookies, TCPAbortOnOverflow: s.AbortOnOverflow})
	}
	sort.Slice(rep.Namespaces, func(i, j int) bool { return rep.Namespaces[i].Netns < rep.Namespaces[j].Netns })
	risks := diagnose.Checkup(open, settings, procs, who)
	for _, r := range risks {
		rep.Risks = append(rep.Risks, doctorRiskJSON{Netns: r.Listener.Netns, Addr: r.Listener.Addr.String(), Port: r.Listener.Port, Risk: r})
	}
	return rep, len(risks), nil
}

func printDoctor(w io.Writer, rep doctorReport) {
	btf := "yes"
	if !rep.BTF {
		btf = "no"
	}
	fmt.Fprintf(w, "kernel %s, BTF %s\n\nstages:\n", rep.Kernel, btf)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, s := range rep.Stages {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.Stage, s.Mode, s.Reason)
	}
	tw.Flush()
	for _, s := range rep.Stages {
		if s.NodeCost != "" {
			fmt.Fprintf(w, "  cost of %s in %s mode: %s\n", s.Stage, s.Mode, s.NodeCost)
		}
	}
	fmt.Fprintf(w, "\nnetwork namespaces with listeners:\n")
	tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  NETNS\tLISTENERS\tsomaxconn\ttcp_max_syn_backlog\ttcp_syncookies\ttcp_abort_on_overflow")
	for _, n := range rep.Namespaces {
		fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t%s\t%s\n", n.Netns, n.Listeners, num(n.Somaxconn), num(n.TCPMaxSynBacklog), num(n.TCPSyncookies), num(n.TCPAbortOnOverflow))
	}
	tw.Flush()
	if len(rep.Risks) == 0 {
		fmt.Fprintf(w, "\nnothing at risk\n")
		return
	}
	fmt.Fprintf(w, "\nat risk (%d):\n", len(rep.Risks))
	for _, r := range rep.Risks {
		fmt.Fprintf(w, "  - %s [%s]\n", strings.TrimSpace(r.Message), r.Knob)
	}
}

func num(v int64) string {
	if v < 0 {
		return "?"
	}
	return strconv.FormatInt(v, 10)
}
