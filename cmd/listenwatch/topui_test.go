package main

import (
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/listenwatch/listenwatch/views"
)

type fixedSource struct{ s views.Snapshot }

func (f *fixedSource) snapshot() (views.Snapshot, error) { return f.s, nil }
func (f *fixedSource) source() string                    { return "test source" }
func (f *fixedSource) close()                            {}

func listenerAt(port uint16, accepted, overflows uint64) views.Listener {
	return views.Listener{Netns: 7, Addr: "127.0.0.1", Port: port, Backlog: 4, Accepted: accepted,
		Drops: map[string]uint64{"accept_queue_full_syn": overflows}, Owner: views.Owner{PID: 1, Comm: "srv"}}
}

func press(m tea.Model, keys ...tea.KeyMsg) tea.Model {
	for _, k := range keys {
		m, _ = m.Update(k)
	}
	return m
}

func runes(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }

func TestTopModel(t *testing.T) {
	t0 := time.Unix(1000, 0)
	first := views.Snapshot{Time: t0, Stages: []views.Stage{{Stage: "syn", Mode: "fentry"}, {Stage: "drops", Mode: "tracepoint"}},
		Listeners: []views.Listener{listenerAt(80, 0, 0), listenerAt(81, 0, 0)}}
	next := first
	next.Time = t0.Add(2 * time.Second)
	next.LostEvents = 3
	next.Listeners = []views.Listener{listenerAt(80, 100, 0), listenerAt(81, 0, 50)}
	var m tea.Model = newTopModel(&fixedSource{next}, first, 2*time.Second)
	m, _ = m.Update(snapMsg{s: next})
	v := m.View()
	for _, want := range []string{"test source", "3 EVENTS LOST", "stages fentry: syn | tracepoint: drops", "window 2.0s"} {
		if !strings.Contains(v, want) {
			t.Errorf("view lacks %q:\n%s", want, v)
		}
	}
	if rows := m.(topModel).visible(); rows[0].Port != 81 {
		t.Fatalf("worst first: row 0 is :%d, want the dropping :81", rows[0].Port)
	}
	// Three steps right: sorted by ACCEPT/s, :80 first.
	m = press(m, tea.KeyMsg{Type: tea.KeyRight}, tea.KeyMsg{Type: tea.KeyRight}, tea.KeyMsg{Type: tea.KeyRight})
	if rows := m.(topModel).visible(); rows[0].Port != 80 || !strings.Contains(m.View(), "ACC/s▼") {
		t.Fatalf("sorted by ACCEPT/s: row 0 :%d\n%s", rows[0].Port, m.View())
	}
	// A burst "/81" then Enter: a filter of its own keys.
	m = press(m, runes("/81"), tea.KeyMsg{Type: tea.KeyEnter})
	if rows := m.(topModel).visible(); len(rows) != 1 || rows[0].Port != 81 || !strings.Contains(m.View(), "filter: 81") {
		t.Fatalf("filter 81: %+v", rows)
	}
	// While typing, q is text, not quit.
	m = press(m, runes("/"), runes("q"))
	if mm := m.(topModel); !mm.editing || mm.filter != "81q" {
		t.Fatalf("editing %v filter %q", mm.editing, mm.filter)
	}
	m = press(m, tea.KeyMsg{Type: tea.KeyEsc})
	if mm := m.(topModel); mm.editing || mm.filter != "" {
		t.Fatalf("esc: editing %v filter %q", mm.editing, mm.filter)
	}
	// Paused: a new snapshot does not change the rows.
	m = press(m, runes("p"))
	later := next
	later.Time = t0.Add(4 * time.Second)
	later.Listeners = []views.Listener{listenerAt(80, 100, 0), listenerAt(81, 0, 500)}
	m, _ = m.Update(snapMsg{s: later})
	if mm := m.(topModel); mm.rows[0].Drops["accept_queue_full_syn"] != 50 || !strings.Contains(mm.View(), "PAUSED") {
		t.Fatalf("paused view moved: %+v", mm.rows[0])
	}
	if _, cmd := m.Update(runes("q")); cmd == nil {
		t.Fatal("q does not quit")
	}
}
