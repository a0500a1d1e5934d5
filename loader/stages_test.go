package loader

import (
	"testing"
	"unsafe"

	"github.com/listenwatch/listenwatch/events"
	"github.com/rs/zerolog"
)

// TestAttachOrder: every stage comes after the stages it depends on,
// whatever the order they are listed in.
func TestAttachOrder(t *testing.T) {
	for _, defs := range [][]stageDef{stageDefs, reversed(stageDefs)} {
		order, err := attachOrder(defs)
		if err != nil {
			t.Fatal(err)
		}
		if len(order) != len(stageDefs) {
			t.Fatalf("%d stages ordered, want %d", len(order), len(stageDefs))
		}
		pos := map[events.Stage]int{}
		for i, d := range order {
			pos[d.stage] = i
		}
		for _, d := range order {
			for _, dep := range d.after {
				if pos[dep] >= pos[d.stage] {
					t.Errorf("%s attaches before %s, which it depends on", d.stage, dep)
				}
			}
		}
	}
	cycle := []stageDef{{stage: "a", after: []events.Stage{"b"}}, {stage: "b", after: []events.Stage{"a"}}}
	if _, err := attachOrder(cycle); err == nil {
		t.Error("a dependency cycle was accepted")
	}
	if _, err := attachOrder([]stageDef{{stage: "a", after: []events.Stage{"nope"}}}); err == nil {
		t.Error("a dependency on an unknown stage was accepted")
	}
}

func reversed(defs []stageDef) []stageDef {
	out := make([]stageDef, len(defs))
	for i, d := range defs {
		out[len(defs)-1-i] = d
	}
	return out
}

func def(s events.Stage) stageDef {
	for _, d := range stageDefs {
		if d.stage == s {
			return d
		}
	}
	panic("no stage " + s)
}

// TestOnFailure: what a stage that did not attach means for the start.
func TestOnFailure(t *testing.T) {
	auto := Config{Mode: events.ModeAuto}
	forced := Config{Mode: events.ModeFentry}
	for _, c := range []struct {
		stage events.Stage
		cfg   Config
		fatal bool
		level zerolog.Level
	}{
		{events.StageRegistry, auto, true, zerolog.ErrorLevel},
		{events.StageSYN, auto, false, zerolog.ErrorLevel},
		{events.StageSYN, forced, true, zerolog.ErrorLevel},
		{events.StageSYN, Config{Mode: events.ModeFentry, Disabled: []events.Stage{events.StageSYN}}, false, zerolog.InfoLevel},
		{events.StageDrops, auto, false, zerolog.WarnLevel},
		{events.StageDrops, forced, false, zerolog.WarnLevel},
		// accept_errors has a mode of its own (__sys_accept4) where
		// fentry or kprobes work: a forced mode binds it too.
		{events.StageAcceptErrors, forced, true, zerolog.ErrorLevel},
		{events.StageAcceptErrors, auto, false, zerolog.ErrorLevel},
		{events.StageHandshake, Config{Mode: events.ModeAuto, Disabled: []events.Stage{events.StageHandshake}}, false, zerolog.InfoLevel},
	} {
		fatal, level := onFailure(def(c.stage), c.cfg)
		if fatal != c.fatal || level != c.level {
			t.Errorf("%s with mode %s disabled %v: fatal %v level %s, want %v %s", c.stage, c.cfg.Mode, c.cfg.Disabled, fatal, level, c.fatal, c.level)
		}
	}
}

// TestStageDefsComplete: every stage has a definition, and every optional
// stage a user can name exists.
func TestStageDefsComplete(t *testing.T) {
	have := map[events.Stage]bool{}
	for _, d := range stageDefs {
		if have[d.stage] {
			t.Errorf("stage %s defined twice", d.stage)
		}
		have[d.stage] = true
		if len(d.candidates) == 0 {
			t.Errorf("stage %s has no candidate mode", d.stage)
		}
	}
	for _, s := range append([]events.Stage{events.StageRegistry}, events.OptionalStages...) {
		if !have[s] {
			t.Errorf("stage %s has no definition", s)
		}
	}
}

func TestWakeupRecords(t *testing.T) {
	for _, c := range []struct {
		bytes uint32
		cpus  int
		want  uint32
	}{
		{262144, 2, 262144 / 96 / 2}, // the default: a quarter of 1 MiB
		{262144, 1, 262144 / 96},
		{4096, 64, 1}, // a tiny ring on a big machine: every record wakes
		{100, 0, 1},
	} {
		if got := wakeupRecords(c.bytes, c.cpus); got != c.want {
			t.Errorf("wakeupRecords(%d, %d) = %d, want %d", c.bytes, c.cpus, got, c.want)
		}
	}
}

// TestListenerStatsLayout: the listener entry keeps the fields the SYN and
// handshake programs write per connection and those the accept program
// writes and reads per accept on different cache lines, whatever the
// entry's alignment, and the hash key before the value off the former
// (bpf/listenwatch.h; make bench-bpf measured the shared line at 1.3%).
func TestListenerStatsLayout(t *testing.T) {
	var s bpfLwListenerStats
	const line = 64
	synLo := unsafe.Offsetof(s.Syns)
	synHi := unsafe.Offsetof(s.LastAckq) + unsafe.Sizeof(s.LastAckq)
	accLo := unsafe.Offsetof(s.Accepted)
	accHi := unsafe.Offsetof(s.Comm) + unsafe.Sizeof(s.Comm)
	if synLo < line-1 {
		t.Errorf("SYN-path fields start at byte %d of the value: the hash key's line can hold them", synLo)
	}
	if accLo < synHi+line-1 {
		t.Errorf("accept fields [%d, %d) within a line of the SYN-path fields [%d, %d)", accLo, accHi, synLo, synHi)
	}
	t.Logf("value %d bytes: SYN/handshake fields [%d, %d), accept fields [%d, %d)", unsafe.Sizeof(s), synLo, synHi, accLo, accHi)
}
