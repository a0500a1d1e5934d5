package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/listenwatch/listenwatch/views"
	"golang.org/x/sys/unix"
)

// The interactive top is a bubbletea program (the Elm architecture: a
// model, messages, a pure view). bubbletea owns the terminal: raw mode,
// the alternate screen, resizes, and restoring it all on exit or Ctrl-C.

var (
	styleHeader   = lipgloss.NewStyle().Bold(true)
	styleColumns  = lipgloss.NewStyle().Reverse(true)
	styleAlarm    = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("9"))
	styleDropping = lipgloss.NewStyle().Foreground(lipgloss.Color("9"))
	styleHelp     = lipgloss.NewStyle().Faint(true)
)

// liveOrder is the live view's column order: the namespace inode, wide
// and rarely what one reads first, goes last (cut first on a narrow
// terminal; the filter still matches it).
var liveOrder = []int{0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1}

type topModel struct {
	src      snapshotter
	interval time.Duration

	prev    views.Snapshot
	rows    []views.Row // the last window, in Rates's order
	window  float64
	lost    uint64 // events lost in the last window
	started bool   // a first window is complete
	err     error

	sortPos int // views.SortDefault or a position in liveOrder
	filter  string
	editing bool // typing a filter
	paused  bool
	width   int
	height  int
	banner  func() string // a first line, when set (the demo's phase)
}

type snapMsg struct {
	s   views.Snapshot
	err error
}

type tickMsg struct{}

func newTopModel(src snapshotter, first views.Snapshot, interval time.Duration) topModel {
	return topModel{src: src, interval: interval, prev: first, sortPos: views.SortDefault, width: 120, height: 40}
}

func (m topModel) tick() tea.Cmd {
	return tea.Tick(m.interval, func(time.Time) tea.Msg { return tickMsg{} })
}

func (m topModel) Init() tea.Cmd { return m.tick() }

func (m topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tickMsg:
		if m.paused {
			return m, m.tick()
		}
		src := m.src
		return m, func() tea.Msg { s, err := src.snapshot(); return snapMsg{s, err} }
	case snapMsg:
		m.err = msg.err
		if msg.err == nil && !m.paused {
			m.rows = views.Rates(m.prev, msg.s)
			m.window = msg.s.Time.Sub(m.prev.Time).Seconds()
			m.lost = msg.s.LostEvents - m.prev.LostEvents
			m.prev = msg.s
			m.started = true
		}
		return m, m.tick()
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyMsg:
		return m.key(msg)
	}
	return m, nil
}

func (m topModel) key(k tea.KeyMsg) (tea.Model, tea.Cmd) {
	if k.Type == tea.KeyCtrlC {
		return m, tea.Quit
	}
	// Keys typed faster than the terminal is read arrive as one message
	// ("/8791"): each is a key of its own.
	if k.Type == tea.KeyRunes && len(k.Runes) > 1 && !k.Paste {
		var model tea.Model = m
		var cmd tea.Cmd
		for _, r := range k.Runes {
			model, cmd = model.(topModel).key(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
			if cmd != nil {
				return model, cmd // quit
			}
		}
		return model, nil
	}
	if m.editing {
		switch k.Type {
		case tea.KeyEnter:
			m.editing = false
		case tea.KeyEsc:
			m.editing, m.filter = false, ""
		case tea.KeyBackspace:
			if r := []rune(m.filter); len(r) > 0 {
				m.filter = string(r[:len(r)-1])
			}
		case tea.KeyRunes, tea.KeySpace:
			m.filter += string(k.Runes)
		}
		return m, nil
	}
	switch k.String() {
	case "q":
		return m, tea.Quit
	case "right", ">", "s":
		m.sortPos++
		if m.sortPos >= len(liveOrder) {
			m.sortPos = views.SortDefault
		}
	case "left", "<":
		m.sortPos--
		if m.sortPos < views.SortDefault {
			m.sortPos = len(liveOrder) - 1
		}
	case "/":
		m.editing = true
	case "esc":
		m.filter = ""
	case "p", " ":
		m.paused = !m.paused
	}
	return m, nil
}

// visible are the rows the filter keeps, in the chosen order.
func (m topModel) visible() []views.Row {
	var out []views.Row
	for i := range m.rows {
		if views.Match(&m.rows[i], m.filter) {
			out = append(out, m.rows[i])
		}
	}
	if m.sortPos >= 0 {
		views.SortRows(out, liveOrder[m.sortPos])
	}
	return out
}

func (m topModel) View() string {
	var b strings.Builder
	line := func(s string) {
		b.WriteString(m.fit(s))
		b.WriteByte('\n')
	}
	// Header: where the data comes from, lost events, each stage's mode.
	lost := "no events lost"
	if m.lost > 0 {
		lost = styleAlarm.Render(fmt.Sprintf("%d EVENTS LOST in the window (ring buffer full): latencies incomplete", m.lost))
	}
	if m.banner != nil {
		line(styleAlarm.Render(m.banner()))
	}
	line(styleHeader.Render("listenwatch top") + " | " + m.src.source() + " | " + lost)
	line("stages " + views.StagesLine(m.prev.Stages))
	sortName := "worst first (drops, accept errors, p99)"
	if m.sortPos >= 0 {
		sortName = views.Columns[liveOrder[m.sortPos]].Name
	}
	status := fmt.Sprintf("window %.1fs | sort: %s | filter: ", m.window, sortName)
	switch {
	case m.editing:
		status += m.filter + "_"
	case m.filter != "":
		status += m.filter
	default:
		status += "none"
	}
	if m.paused {
		status += " | " + styleAlarm.Render("PAUSED")
	}
	if m.err != nil {
		status += " | " + styleAlarm.Render("error: "+m.err.Error())
	}
	line(status)

	rows := m.visible()
	cells := make([][]string, len(rows))
	widths := make([]int, len(liveOrder))
	for j, c := range liveOrder {
		widths[j] = len(views.Columns[c].Short) + 1 // room for the sort mark
	}
	for i := range rows {
		cells[i] = make([]string, len(liveOrder))
		for j, c := range liveOrder {
			cells[i][j] = views.Columns[c].Cell(&rows[i])
			widths[j] = max(widths[j], lipgloss.Width(cells[i][j]))
		}
	}
	head := make([]string, len(liveOrder))
	for j, c := range liveOrder {
		name := views.Columns[c].Short
		if j == m.sortPos {
			name += "▼"
		}
		head[j] = pad(name, widths[j], j >= 2 && c != 1)
	}
	b.WriteString(styleColumns.Render(m.fit(strings.Join(head, " "))))
	b.WriteByte('\n')
	room := max(m.height-6, 1) // 3 header lines, columns, 2 help lines
	if m.banner != nil {
		room--
	}
	if !m.started {
		line(fmt.Sprintf("first window of %v begun…", m.interval))
		room--
	}
	for i := range rows {
		if i >= room {
			break
		}
		cols := make([]string, len(liveOrder))
		for j, c := range liveOrder {
			cols[j] = pad(cells[i][j], widths[j], j >= 2 && c != 1)
		}
		l := m.fit(strings.Join(cols, " "))
		if rows[i].DropsTotal > 0 {
			l = styleDropping.Render(l)
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	line(styleHelp.Render(fmt.Sprintf("%d of %d listeners | ←/→ sort  / filter  esc clear  p pause  q quit", min(len(rows), room), len(m.rows))))
	b.WriteString(styleHelp.Render(m.fit(views.Legend)))
	return b.String()
}

// fit cuts a line to the terminal's width.
func (m topModel) fit(s string) string {
	return lipgloss.NewStyle().MaxWidth(m.width).Render(s)
}

func pad(s string, w int, right bool) string {
	if n := w - lipgloss.Width(s); n > 0 {
		if right {
			return strings.Repeat(" ", n) + s
		}
		return s + strings.Repeat(" ", n)
	}
	return s
}

// isTerminal says whether f is a terminal: the interactive view needs
// one on both sides.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// runTopUI runs the interactive view until q or Ctrl-C.
func runTopUI(src snapshotter, first views.Snapshot, interval time.Duration, stdout io.Writer) error {
	p := tea.NewProgram(newTopModel(src, first, interval), tea.WithAltScreen(), tea.WithOutput(stdout))
	_, err := p.Run()
	return err
}
