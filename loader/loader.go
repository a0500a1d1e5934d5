// Package loader loads listenwatch's BPF programs, attaches each stage in
// the best mode the running kernel allows, and reads the ring buffer into
// domain events.
package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/listenwatch/listenwatch/events"
	"github.com/rs/zerolog"
)

// Tracer owns every kernel object listenwatch creates; Close releases all
// of them. Nothing is pinned.
type Tracer struct {
	cfg    Config
	log    zerolog.Logger
	spec   *ebpf.CollectionSpec
	maps   map[string]*ebpf.Map
	progs  map[string]*ebpf.Program
	links  []link.Link
	hooks  []events.Hook
	reader *ringbuf.Reader
	// tracefs is set when the loader mounted tracefs itself (and unmounts
	// it on Close): syscall tracepoints attach through it.
	tracefs string
	// host is read once, to explain failed attachments in plain words.
	host hostFacts

	records      atomic.Uint64 // records read from the ring buffer
	decodeErrors atomic.Uint64 // records that could not be decoded

	// Eviction accounting (see Listeners): the registry is an LRU, so a
	// full table evicts silently unless the reader notices.
	registryMu sync.Mutex
	lastOpen   map[events.ListenerKey]struct{} // open at the last reading
	swept      map[events.ListenerKey]struct{} // deleted by the sweeper since
	evicted    atomic.Uint64
}

// socketsPerListener sizes the per-socket table from the listener table.
const socketsPerListener = 4

// wakeupRecords is how many records one CPU sends before it wakes the
// reader: all CPUs together then wake it before wakeupBytes of records
// wait in the ring (a record takes its size and an 8-byte header).
func wakeupRecords(wakeupBytes uint32, cpus int) uint32 {
	per := uint64(binary.Size(bpfLwEvent{}) + 8)
	n := uint64(wakeupBytes) / per / uint64(max(cpus, 1))
	return uint32(max(n, 1))
}

// sharedMaps are created once and handed to every program.
var sharedMaps = []string{bpfMapLwEvents, bpfMapLwListeners, bpfMapLwSocks, bpfMapLwConns, bpfMapLwConnSlots, bpfMapLwCounters, bpfMapLwKpArgs, bpfMapLwKpCpu, bpfMapLwDiscardCpu, bpfMapLwUnwoken, bpfMapLwAbortReqs}

// Open loads and attaches listenwatch. Stages that cannot attach in auto
// mode are logged and reported by Hooks; in a forced mode they are an error.
func Open(cfg Config, log zerolog.Logger) (_ *Tracer, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := CheckBTF(BTFPath); err != nil {
		return nil, err
	}
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
	// Listening sockets: a few per listener (SO_REUSEPORT groups).
	spec.Maps[bpfMapLwSocks].MaxEntries = socketsPerListener * cfg.ListenerTableSize
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count CPUs: %w", err)
	}
	if err := spec.Variables[bpfVarCfgWakeupRecords].Set(wakeupRecords(cfg.WakeupBytes, cpus)); err != nil {
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
	t.host = readHostFacts()

	order, err := attachOrder(stageDefs)
	if err != nil {
		return nil, err
	}
	for _, d := range order {
		h := t.attachStage(d)
		t.hooks = append(t.hooks, h)
		ev, msg := log.Info(), "stage attached"
		if h.Mode == events.ModeNone {
			fatal, level := onFailure(d, cfg)
			if fatal {
				return nil, fmt.Errorf("stage %s: %w", d.stage, h.Err)
			}
			ev, msg = log.WithLevel(level), "stage NOT attached: its metrics stay empty"
		}
		ev = ev.Str("stage", string(d.stage)).Str("mode", string(h.Mode)).Strs("programs", h.Programs)
		if h.NodeCost != "" {
			ev = ev.Str("node_cost", h.NodeCost)
		}
		if h.Err != nil && h.Mode == events.ModeNone {
			ev = ev.AnErr("reason", h.Err)
		} else if h.Err != nil {
			ev = ev.AnErr("better_modes_unavailable", h.Err)
		}
		ev.Msg(msg)
	}

	n, how, err := t.seedListeners()
	if err != nil {
		// Listeners opened later are still seen; older ones stay
		// unattributed (counted in unattributed_events_total).
		log.Warn().Err(err).Msg("could not register the listeners that existed before the start")
	} else {
		log.Info().Int("listeners", n).Str("read_by", how).Msg("existing listeners registered")
	}

	t.reader, err = ringbuf.NewReader(t.maps[bpfMapLwEvents])
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	return t, nil
}

// attachStage tries the stage's candidates in order and keeps the first
// that loads and attaches.
func (t *Tracer) attachStage(d stageDef) events.Hook {
	h := events.Hook{Stage: d.stage, Mode: events.ModeNone}
	if t.cfg.disabled(d.stage) {
		h.Err = errors.New("disabled by configuration")
		return h
	}
	if d.coveredBy != nil {
		if by, ok := d.coveredBy(t.modeOf); ok {
			// Attached by the other stage, which owns the programs (and
			// reports their statistics).
			h.Mode, h.Err = t.modeOf(by), fmt.Errorf("runs in the %s stage's programs", by)
			return h
		}
	}
	var consts map[string]any
	if d.consts != nil {
		consts = d.consts(t.modeOf)
	}
	var tried []string
	for _, c := range d.candidates {
		if forcedModeApplies(d, t.cfg) && c.mode != t.cfg.Mode {
			continue
		}
		progs, err := t.attach(c, consts)
		if err != nil {
			t.log.Debug().Str("stage", string(d.stage)).Str("mode", string(c.mode)).Err(err).Msg("hook mode unavailable")
			tried = append(tried, explain(c.mode, err, t.host))
			continue
		}
		h.Mode, h.Programs, h.NodeCost = c.mode, progs, c.nodeCost
		break
	}
	if len(tried) > 0 {
		h.Err = errors.New(strings.Join(tried, "; "))
	} else if h.Mode == events.ModeNone {
		h.Err = fmt.Errorf("no %s mode for this stage", t.cfg.Mode)
	}
	return h
}

func (t *Tracer) modeOf(s events.Stage) events.Mode {
	for _, h := range t.hooks {
		if h.Stage == s {
			return h.Mode
		}
	}
	return events.ModeNone
}

// attach loads and attaches every program of a candidate, or none of them.
// consts are set on a copy of the spec: nothing shared changes.
func (t *Tracer) attach(c candidate, consts map[string]any) (names []string, err error) {
	spec := t.spec.Copy()
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	if c.prepare != nil {
		if err := c.prepare(spec, t.cfg.Proc); err != nil {
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
		if pr.only != nil && !pr.only(t.modeOf) {
			continue
		}
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
// Each is first loaded with its typed reads (cfg_rdonly_cast: plain loads
// through bpf_rdonly_cast, 6.2+, where a helper call per field costs
// 40-60 ns); a kernel without the kfunc, or whose verifier refuses it for
// this program type, gets the same program with helper reads.
func (t *Tracer) load(spec *ebpf.CollectionSpec, name string) (*ebpf.Program, error) {
	p, err := t.loadOne(spec, name, true)
	if err == nil {
		return p, nil
	}
	p, err2 := t.loadOne(spec, name, false)
	if err2 != nil {
		return nil, err2
	}
	t.log.Debug().Err(err).Str("program", name).Msg("typed reads refused: program loaded with helper reads")
	return p, nil
}

func (t *Tracer) loadOne(spec *ebpf.CollectionSpec, name string, rdonlyCast bool) (*ebpf.Program, error) {
	one := spec.Copy()
	if err := one.Variables[bpfVarCfgRdonlyCast].Set(rdonlyCast); err != nil {
		return nil, err
	}
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

// Hooks reports the mode of every stage.
func (t *Tracer) Hooks() []events.Hook { return t.hooks }

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
