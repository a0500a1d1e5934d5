package views

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	b := []float64{0.001, 0.01, 0.1}
	for _, tc := range []struct {
		q      float64
		counts []uint64
		want   float64
	}{
		{0.5, []uint64{10, 0, 0, 0}, 0.0005}, // linear in [0, 1ms]
		{0.5, []uint64{0, 10, 0, 0}, 0.0055}, // in [1ms, 10ms]
		{0.99, []uint64{50, 49, 1, 0}, 0.01}, // rank 99 ends the 10ms bucket
		{0.99, []uint64{0, 0, 0, 5}, 0.1},    // +Inf: the last bound
		{0.5, []uint64{1, 0, 0, 1}, 0.001},   // the empty middle buckets are skipped
	} {
		got := quantile(tc.q, b, tc.counts)
		if got == nil || math.Abs(*got-tc.want) > 1e-12 {
			t.Errorf("quantile(%v, %v) = %v, want %v", tc.q, tc.counts, deref(got), tc.want)
		}
	}
	if quantile(0.5, b, []uint64{0, 0, 0, 0}) != nil {
		t.Error("no observations must give no quantile")
	}
}

func TestRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	lat := func(c ...uint64) *Latency { return &Latency{Bounds: []float64{0.001, 0.01}, Counts: c} }
	prev := Snapshot{Time: t0, Listeners: []Listener{
		{Netns: 1, Addr: "0.0.0.0", Port: 80, Accepted: 100, Drops: map[string]uint64{"accept_queue_full_syn": 5}, SYNToAccept: lat(90, 10, 0)},
		{Netns: 1, Addr: "0.0.0.0", Port: 443, Accepted: 50, Drops: map[string]uint64{}, SYNToAccept: lat(50, 0, 0)},
		{Netns: 1, Addr: "0.0.0.0", Port: 22, Accepted: 9, Drops: map[string]uint64{}},
	}}
	cur := Snapshot{Time: t0.Add(2 * time.Second), Listeners: []Listener{
		{Netns: 1, Addr: "0.0.0.0", Port: 80, Accepted: 120, AcceptQueue: 3, Backlog: 4, RequestedBacklog: 128,
			Drops: map[string]uint64{"accept_queue_full_syn": 45}, SYNToAccept: lat(90, 30, 0)},
		{Netns: 1, Addr: "0.0.0.0", Port: 443, Accepted: 60, Drops: map[string]uint64{}, SYNToAccept: lat(60, 0, 0)},
		{Netns: 1, Addr: "0.0.0.0", Port: 22, Accepted: 2, Drops: map[string]uint64{}},               // restarted
		{Netns: 2, Addr: "::", Port: 8080, Accepted: 4, AcceptEMFILE: 6, Drops: map[string]uint64{}}, // new
	}}
	rows := Rates(prev, cur)
	if len(rows) != 4 || rows[0].Port != 80 || rows[1].Port != 8080 {
		t.Fatalf("order: %+v", rows)
	}
	r := rows[0]
	if r.WindowSeconds != 2 || r.Accepted != 20 || r.AcceptedPerSecond != 10 || r.DropsTotal != 40 || r.DropsPerSecond["accept_queue_full_syn"] != 20 {
		t.Errorf("row 80: %+v", r)
	}
	// The window's 20 connections were all in the 1-10 ms bucket.
	if r.P50Seconds == nil || math.Abs(*r.P50Seconds-0.0055) > 1e-12 {
		t.Errorf("p50 %v, want 5.5ms from the window's delta only", deref(r.P50Seconds))
	}
	if rows[1].AcceptEMFILE != 6 || rows[1].Accepted != 4 {
		t.Errorf("new listener: %+v", rows[1])
	}
	for _, row := range rows {
		if row.Port == 22 && row.Accepted != 2 {
			t.Errorf("restarted listener: accepted %d in the window, want 2", row.Accepted)
		}
	}
	var b strings.Builder
	if err := WriteTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 5 || !strings.Contains(lines[1], "0.0.0.0:80") || !strings.Contains(lines[1], "3/4 (asked 128)") || !strings.Contains(lines[1], "5.5ms") {
		t.Errorf("table:\n%s", b.String())
	}
}
