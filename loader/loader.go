// Package loader loads listenwatch's BPF programs, attaches each stage in
// the best mode the running kernel allows, and reads the ring buffer into
// domain events.
package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/rs/zerolog"
)

// Hook says how one stage runs on this kernel.
type Hook struct {
	Stage    Stage
	Mode     Mode     // ModeNone when not attached
	Programs []string // BPF programs attached for it
	Err      error    // why it is not attached, or why better modes were not used
}

// Tracer owns every kernel object listenwatch creates; Close releases all
// of them. Nothing is pinned.
type Tracer struct {
	cfg    Config
	log    zerolog.Logger
	spec   *ebpf.CollectionSpec
	maps   map[string]*ebpf.Map
	progs  map[string]*ebpf.Program
	links  []link.Link
	hooks  []Hook
	reader *ringbuf.Reader
	// tracefs is set when the loader mounted tracefs itself (and unmounts
	// it on Close): syscall tracepoints attach through it.
	tracefs string

	records      atomic.Uint64 // records read from the ring buffer
	decodeErrors atomic.Uint64 // records that could not be decoded
}

// probe is one program and how to attach it.
type probe struct {
	prog   string
	attach func(*ebpf.Program) (link.Link, error)
}

type candidate struct {
	mode   Mode
	probes []probe
	// prepare sets the variables a mode needs before its programs load.
	prepare func(*ebpf.CollectionSpec) error
}

func tracing(p *ebpf.Program) (link.Link, error) {
	return link.AttachTracing(link.TracingOptions{Program: p})
}

func kprobe(sym string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Kprobe(sym, p, nil) }
}

func kretprobe(sym string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Kretprobe(sym, p, nil) }
}

func tracepoint(group, name string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint(group, name, p, nil) }
}

// candidates lists, per stage, the modes in order of preference.
func candidates(s Stage) []candidate {
	switch s {
	case StageSYN:
		return []candidate{
			{mode: ModeFentry, probes: []probe{{bpfProgLwFexitConnRequest, tracing}}},
			{mode: ModeKprobe, probes: []probe{
				{bpfProgLwKpConnRequest, kprobe("tcp_conn_request")},
				{bpfProgLwKrpConnRequest, kretprobe("tcp_conn_request")},
			}},
			{mode: ModeTracepoint, probes: []probe{{bpfProgLwTpConsume, tracing}}, prepare: prepareConsume},
		}
	case StageHandshake:
		return []candidate{
			{mode: ModeFentry, probes: []probe{
				{bpfProgLwFexitSynRecv4, tracing},
				{bpfProgLwFexitSynRecv6, tracing},
			}},
			{mode: ModeKprobe, probes: []probe{
				{bpfProgLwKpSynRecv4, kprobe("tcp_v4_syn_recv_sock")},
				{bpfProgLwKrpSynRecv4, kretprobe("tcp_v4_syn_recv_sock")},
				{bpfProgLwKpSynRecv6, kprobe("tcp_v6_syn_recv_sock")},
				{bpfProgLwKrpSynRecv6, kretprobe("tcp_v6_syn_recv_sock")},
			}},
			// Runs inside the registry program (inet_sock_set_state
			// SYN_RECV -> ESTABLISHED), switched on by cfg_tp_handshake.
			{mode: ModeTracepoint},
		}
	case StageAccept:
		return []candidate{
			{mode: ModeFentry, probes: []probe{{bpfProgLwFexitAccept, tracing}}},
			{mode: ModeKprobe, probes: []probe{
				{bpfProgLwKpAccept, kprobe("inet_csk_accept")},
				{bpfProgLwKrpAccept, kretprobe("inet_csk_accept")},
			}},
			// The same syscall programs as accept_errors, with the
			// accepted-connection path switched on.
			{mode: ModeTracepoint, probes: acceptSyscalls, prepare: setAcceptPath(true)},
		}
	case StageAcceptErrors:
		return []candidate{{mode: ModeTracepoint, probes: acceptSyscalls, prepare: setAcceptPath(false)}}
	case StageDrops:
		return []candidate{{mode: ModeTracepoint, probes: []probe{{bpfProgLwTpKfree, tracing}}}}
	case StageSynackRetx:
		return []candidate{{mode: ModeTracepoint, probes: []probe{{bpfProgLwTpSynack, tracing}}}}
	case StageRegistry:
		return []candidate{{mode: ModeTracepoint, probes: []probe{{bpfProgLwTpState, tracing}}}}
	}
	return nil
}

// acceptSyscalls see accept(2) and accept4(2) return: failures always,
// accepted connections when cfg_tp_accept is set.
var acceptSyscalls = []probe{
	{bpfProgLwTpAccept4, tracepoint("syscalls", "sys_exit_accept4")},
	{bpfProgLwTpAccept, tracepoint("syscalls", "sys_exit_accept")},
}

func setAcceptPath(on bool) func(*ebpf.CollectionSpec) error {
	return func(spec *ebpf.CollectionSpec) error { return spec.Variables[bpfVarCfgTpAccept].Set(on) }
}

// prepareConsume gives lw_tp_consume the address range of
// tcp_rcv_state_process: only consume_skb calls from there are listener SYNs.
func prepareConsume(spec *ebpf.CollectionSpec) error {
	lo, hi, err := symbolRange("/proc/kallsyms", "tcp_rcv_state_process")
	if err != nil {
		return err
	}
	if err := spec.Variables[bpfVarCfgRspLo].Set(lo); err != nil {
		return err
	}
	return spec.Variables[bpfVarCfgRspHi].Set(hi)
}

// sharedMaps are created once and handed to every program.
var sharedMaps = []string{bpfMapLwEvents, bpfMapLwListeners, bpfMapLwConns, bpfMapLwCounters, bpfMapLwKpArgs}

// ErrNoBTF means the kernel does not describe its own types: CO-RE cannot work.
var ErrNoBTF = errors.New("kernel BTF not available (needs CONFIG_DEBUG_INFO_BTF, /sys/kernel/btf/vmlinux)")

// Open loads and attaches listenwatch. Stages that cannot attach in auto
// mode are logged and reported by Hooks; in a forced mode they are an error.
func Open(cfg Config, log zerolog.Logger) (_ *Tracer, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if _, err := btf.LoadKernelSpec(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBTF, err)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("parse BPF object: %w", err)
	}
	spec.Maps[bpfMapLwEvents].MaxEntries = cfg.RingbufSize
	spec.Maps[bpfMapLwConns].MaxEntries = cfg.ConnTableSize
	spec.Maps[bpfMapLwListeners].MaxEntries = cfg.ListenerTableSize
	if err := spec.Variables[bpfVarCfgWakeupBytes].Set(uint64(cfg.WakeupBytes)); err != nil {
		return nil, err
	}

	t := &Tracer{cfg: cfg, log: log, spec: spec, maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{}}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	for _, name := range sharedMaps {
		m, err := ebpf.NewMap(spec.Maps[name])
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w%s", name, err, privilegeHint(err))
		}
		t.maps[name] = m
	}

	if t.tracefs, err = ensureTracefs(); err != nil {
		log.Warn().Err(err).Msg("tracefs unavailable: syscall tracepoints and kprobes cannot attach")
	} else if t.tracefs != "" {
		log.Info().Str("path", t.tracefs).Msg("mounted tracefs for syscall tracepoints; unmounted on exit")
	}

	for _, s := range Stages {
		h := t.attachStage(s)
		t.hooks = append(t.hooks, h)
		ev, msg := log.Info(), "stage attached"
		if h.Mode == ModeNone {
			if s == StageRegistry || (cfg.Mode != ModeAuto && !cfg.disabled(s) && !auxiliary(s)) {
				return nil, fmt.Errorf("stage %s: %w", s, h.Err)
			}
			msg = "stage NOT attached: its metrics stay empty"
			switch {
			case auxiliary(s) && !cfg.disabled(s):
				ev = log.Warn() // a kernel too old for its tracepoint
			case !cfg.disabled(s):
				ev = log.Error()
			}
		}
		ev = ev.Str("stage", string(s)).Str("mode", string(h.Mode)).Strs("programs", h.Programs)
		if h.Err != nil {
			ev = ev.AnErr("unavailable", h.Err)
		}
		ev.Msg(msg)
	}

	n, err := seedListeners(t.maps[bpfMapLwListeners])
	if err != nil {
		// Listeners opened later are still seen; older ones show up on
		// their first accept.
		log.Warn().Err(err).Msg("could not read existing listeners from /proc")
	} else {
		log.Info().Int("listeners", n).Msg("existing listeners registered")
	}

	t.reader, err = ringbuf.NewReader(t.maps[bpfMapLwEvents])
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	return t, nil
}

// attachStage tries the stage's candidates in order and keeps the first
// that loads and attaches.
func (t *Tracer) attachStage(s Stage) Hook {
	h := Hook{Stage: s, Mode: ModeNone}
	if t.cfg.disabled(s) {
		h.Err = errors.New("disabled by configuration")
		return h
	}
	if s == StageAcceptErrors && t.modeOf(StageAccept) == ModeTracepoint {
		// Already attached by the accept stage, which owns the programs
		// (and reports their statistics).
		h.Mode, h.Err = ModeTracepoint, errors.New("runs in the accept stage's programs")
		return h
	}
	var tried []string
	for _, c := range candidates(s) {
		if t.cfg.Mode != ModeAuto && c.mode != t.cfg.Mode && s != StageRegistry && !auxiliary(s) {
			continue
		}
		// The tracepoint handshake lives in the registry program.
		tpHandshake := s == StageRegistry && t.modeOf(StageHandshake) == ModeTracepoint
		if err := t.spec.Variables[bpfVarCfgTpHandshake].Set(tpHandshake); err != nil {
			h.Err = err
			return h
		}
		// Without the kfree_skb hook, the handshake programs count the
		// final-ACK overflows themselves.
		if err := t.spec.Variables[bpfVarCfgKfreeDrops].Set(t.modeOf(StageDrops) != ModeNone); err != nil {
			h.Err = err
			return h
		}
		progs, err := t.attach(c)
		if err != nil {
			t.log.Debug().Str("stage", string(s)).Str("mode", string(c.mode)).Err(err).Msg("hook mode unavailable")
			tried = append(tried, fmt.Sprintf("%s: %v", c.mode, err))
			continue
		}
		h.Mode, h.Programs = c.mode, progs
		break
	}
	if len(tried) > 0 {
		h.Err = errors.New(strings.Join(tried, "; "))
	} else if h.Mode == ModeNone {
		h.Err = fmt.Errorf("no %s mode for this stage", t.cfg.Mode)
	}
	return h
}

func (t *Tracer) modeOf(s Stage) Mode {
	for _, h := range t.hooks {
		if h.Stage == s {
			return h.Mode
		}
	}
	return ModeNone
}

// attach loads and attaches every program of a candidate, or none of them.
func (t *Tracer) attach(c candidate) (names []string, err error) {
	spec := t.spec.Copy()
	if c.prepare != nil {
		if err := c.prepare(spec); err != nil {
			return nil, err
		}
	}
	var (
		progs []*ebpf.Program
		links []link.Link
	)
	defer func() {
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			for _, p := range progs {
				p.Close()
			}
		}
	}()
	for _, pr := range c.probes {
		p, err := t.load(spec, pr.prog)
		if err != nil {
			return nil, fmt.Errorf("load %s: %w%s", pr.prog, err, privilegeHint(err))
		}
		progs = append(progs, p)
		l, err := pr.attach(p)
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", pr.prog, err)
		}
		links = append(links, l)
		names = append(names, pr.prog)
	}
	for i, n := range names {
		t.progs[n] = progs[i]
	}
	t.links = append(t.links, links...)
	return names, nil
}

// load loads one program of spec against the shared maps. Programs load one
// by one so that a kernel refusing one attach type does not fail the others.
func (t *Tracer) load(spec *ebpf.CollectionSpec, name string) (*ebpf.Program, error) {
	one := spec.Copy()
	for n := range one.Programs {
		if n != name {
			delete(one.Programs, n)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: t.maps})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(name), nil
}

func privilegeHint(err error) string {
	if errors.Is(err, os.ErrPermission) && os.Geteuid() != 0 {
		return " (run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)"
	}
	return ""
}

// Hooks reports the mode of every stage.
func (t *Tracer) Hooks() []Hook { return t.hooks }

// Close detaches every program and closes every map.
func (t *Tracer) Close() error {
	var errs []error
	if t.reader != nil {
		errs = append(errs, t.reader.Close())
	}
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	for _, p := range t.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range t.maps {
		errs = append(errs, m.Close())
	}
	if t.tracefs != "" {
		errs = append(errs, unmountTracefs(t.tracefs))
		t.tracefs = ""
	}
	t.links, t.progs, t.maps = nil, nil, nil
	return errors.Join(errs...)
}
