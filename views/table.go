package views

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Column is one column of top: its header, its cell, and its order
// (worst first) when the table is sorted by it.
type Column struct {
	Name  string
	Short string // in the live view, where 120 columns must hold them all
	cell  func(r *Row) string
	worse func(a, b *Row) bool
}

// Cell is the column's text for r.
func (c *Column) Cell(r *Row) string { return c.cell(r) }

func acceptQueueFull(r *Row) uint64 {
	return r.Drops["accept_queue_full_syn"] + r.Drops["accept_queue_full_ack"] + r.Drops["accept_queue_full_cookie_ack"]
}

func byCount(f func(r *Row) uint64) func(a, b *Row) bool {
	return func(a, b *Row) bool { return f(a) > f(b) }
}

// Columns are top's columns, in order. SortDefault is worst first as
// Rates orders rows.
var Columns = []Column{
	{"LISTENER", "LISTENER", func(r *Row) string { return listener(r.Addr, r.Port) }, func(a, b *Row) bool { return listener(a.Addr, a.Port) < listener(b.Addr, b.Port) }},
	{"NETNS", "NETNS", func(r *Row) string { return strconv.FormatUint(uint64(r.Netns), 10) }, func(a, b *Row) bool { return a.Netns < b.Netns }},
	{"OWNER", "OWNER", func(r *Row) string { return r.Owner.String() }, func(a, b *Row) bool { return a.Owner.String() < b.Owner.String() }},
	{"ACCEPT/s", "ACC/s", func(r *Row) string { return rate(r.AcceptedPerSecond) }, byCount(func(r *Row) uint64 { return r.Accepted })},
	{"P50", "P50", func(r *Row) string { return dur(r.P50Seconds) }, func(a, b *Row) bool { return deref(a.P50Seconds) > deref(b.P50Seconds) }},
	{"P99", "P99", func(r *Row) string { return dur(r.P99Seconds) }, func(a, b *Row) bool { return deref(a.P99Seconds) > deref(b.P99Seconds) }},
	{"QUEUE/BACKLOG", "QUEUE", func(r *Row) string {
		q := fmt.Sprintf("%d/%d", r.AcceptQueue, r.Backlog)
		if r.RequestedBacklog > r.Backlog {
			q += fmt.Sprintf(" (asked %d)", r.RequestedBacklog) // capped by somaxconn
		}
		return q
	}, func(a, b *Row) bool { return fill(a) > fill(b) }},
	{"AQFULL/s", "AQ/s", func(r *Row) string { return rate(r.Rate(acceptQueueFull(r))) }, byCount(acceptQueueFull)},
	{"SYNQFULL/s", "SYNQ/s", func(r *Row) string { return rate(r.Rate(r.Drops["syn_queue_full"])) }, byCount(func(r *Row) uint64 { return r.Drops["syn_queue_full"] })},
	{"OTHER/s", "OTH/s", func(r *Row) string { return rate(r.Rate(r.Drops["other"])) }, byCount(func(r *Row) uint64 { return r.Drops["other"] })},
	{"COOKIES/s", "COOK/s", func(r *Row) string { return rate(r.Rate(r.Cookies)) }, byCount(func(r *Row) uint64 { return r.Cookies })},
	{"RETX/s", "RETX/s", func(r *Row) string { return rate(r.Rate(r.SynackRetrans)) }, byCount(func(r *Row) uint64 { return r.SynackRetrans })},
	{"EMFILE/s", "EMF/s", func(r *Row) string { return rate(r.Rate(r.AcceptEMFILE)) }, byCount(func(r *Row) uint64 { return r.AcceptEMFILE })},
	{"ENFILE/s", "ENF/s", func(r *Row) string { return rate(r.Rate(r.AcceptENFILE)) }, byCount(func(r *Row) uint64 { return r.AcceptENFILE })},
}

// Legend explains the short names of the live view.
const Legend = "AQ: accept queue full  SYNQ: SYN queue full  OTH: other drops  COOK: SYN cookies  RETX: SYN-ACK retransmits  EMF/ENF: accept() EMFILE/ENFILE"

// StagesLine is each stage's attach mode, grouped by mode:
// "fentry: syn accept | tracepoint: drops registry".
func StagesLine(stages []Stage) string {
	var order []string
	by := map[string][]string{}
	for _, s := range stages {
		if _, ok := by[s.Mode]; !ok {
			order = append(order, s.Mode)
		}
		by[s.Mode] = append(by[s.Mode], s.Stage)
	}
	parts := make([]string, 0, len(order))
	for _, m := range order {
		parts = append(parts, m+": "+strings.Join(by[m], " "))
	}
	return strings.Join(parts, " | ")
}

// SortDefault is the sort top starts with: Rates's order (most drops,
// then accept() failures, then slowest p99).
const SortDefault = -1

func fill(r *Row) float64 {
	if r.Backlog == 0 {
		return 0
	}
	return float64(r.AcceptQueue) / float64(r.Backlog)
}

// SortRows orders rows by column col, worst first, ties in Rates's
// order; SortDefault leaves Rates's order.
func SortRows(rows []Row, col int) {
	if col < 0 || col >= len(Columns) {
		return
	}
	w := Columns[col].worse
	sort.SliceStable(rows, func(i, j int) bool { return w(&rows[i], &rows[j]) })
}

// Match says whether a row's listener, namespace or owner contains text
// (top's filter); empty text matches every row.
func Match(r *Row, text string) bool {
	if text == "" {
		return true
	}
	for _, c := range Columns[:3] {
		if strings.Contains(c.Cell(r), text) {
			return true
		}
	}
	return r.Owner.Pod != "" && strings.Contains(r.Owner.Namespace+"/"+r.Owner.Pod, text)
}

// WriteTable writes rows as the plain table of `top --once`: one line per
// listener, worst first, for scripts, pipes and tickets.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	for _, c := range Columns {
		fmt.Fprint(tw, c.Name, "\t")
	}
	fmt.Fprintln(tw)
	for i := range rows {
		for _, c := range Columns {
			fmt.Fprint(tw, c.Cell(&rows[i]), "\t")
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func listener(addr string, port uint16) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return addr + ":" + strconv.Itoa(int(port))
	}
	return netip.AddrPortFrom(a, port).String()
}

func rate(v float64) string {
	if v == 0 {
		return "0"
	}
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func dur(s *float64) string {
	switch {
	case s == nil:
		return "-"
	case *s < 1e-3:
		return strconv.FormatFloat(*s*1e6, 'f', 0, 64) + "us"
	case *s < 1:
		return strconv.FormatFloat(*s*1e3, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(*s, 'f', 2, 64) + "s"
}
