package events

import (
	"testing"
	"time"
)

func TestTimeline(t *testing.T) {
	const us = time.Microsecond
	tests := []struct {
		name string
		conn Conn
		want Timeline
	}{
		{
			name: "all stages",
			conn: Conn{Flags: FlagHandshake | FlagSYNFromRTT, SYNACKSent: 1000 * us, Established: 1040 * us, Accepted: 21040 * us},
			want: Timeline{Handshake: 40 * us, QueueWait: 20000 * us, Total: 20040 * us, HasHandshake: true, HasQueueWait: true, HasTotal: true},
		},
		{
			name: "agent started mid-handshake: no SYN time",
			conn: Conn{Flags: FlagHandshake, Established: 5 * us, Accepted: 9 * us},
			want: Timeline{QueueWait: 4 * us, HasQueueWait: true, Missing: MissingSYN},
		},
		{
			name: "agent started while queued: accept only",
			conn: Conn{Accepted: 9 * us},
			want: Timeline{Missing: MissingHandshake},
		},
		{
			name: "SYN known but handshake record evicted: total only",
			conn: Conn{Flags: FlagSYNExact, SYNACKSent: 3 * us, Accepted: 9 * us},
			want: Timeline{Total: 6 * us, HasTotal: true, Missing: MissingHandshake},
		},
		{
			name: "cookie child: SYN time never trusted",
			conn: Conn{Flags: FlagHandshake | FlagCookie, SYNACKSent: 1 * us, Established: 5 * us, Accepted: 9 * us},
			want: Timeline{QueueWait: 4 * us, HasQueueWait: true, Missing: MissingSYN},
		},
		{
			name: "handshake after accept is invalid, not negative",
			conn: Conn{Flags: FlagHandshake, SYNACKSent: 1 * us, Established: 10 * us, Accepted: 9 * us},
			want: Timeline{Missing: MissingInvalid},
		},
		{
			name: "SYN after handshake is invalid",
			conn: Conn{Flags: FlagHandshake | FlagSYNFromRTT, SYNACKSent: 6 * us, Established: 5 * us, Accepted: 9 * us},
			want: Timeline{Missing: MissingInvalid},
		},
		{
			name: "no accept time is invalid",
			conn: Conn{Flags: FlagHandshake, Established: 5 * us},
			want: Timeline{Missing: MissingInvalid},
		},
		{
			name: "handshake flag without time counts as missed",
			conn: Conn{Flags: FlagHandshake, SYNACKSent: 1 * us, Accepted: 9 * us},
			want: Timeline{Total: 8 * us, HasTotal: true, Missing: MissingHandshake},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.conn.Timeline()
			if got != tt.want {
				t.Fatalf("Timeline() = %+v, want %+v", got, tt.want)
			}
			if got.HasHandshake && got.HasQueueWait && got.HasTotal && got.Handshake+got.QueueWait != got.Total {
				t.Fatalf("handshake %v + wait %v != total %v", got.Handshake, got.QueueWait, got.Total)
			}
		})
	}
}

func TestMissingString(t *testing.T) {
	for m, want := range map[Missing]string{MissingNone: "none", MissingSYN: "syn", MissingHandshake: "handshake", MissingInvalid: "invalid"} {
		if m.String() != want {
			t.Errorf("%d.String() = %q, want %q", m, m.String(), want)
		}
	}
}

func BenchmarkTimeline(b *testing.B) {
	c := Conn{Flags: FlagHandshake | FlagSYNFromRTT, SYNACKSent: 1000, Established: 1040, Accepted: 21040}
	b.ReportAllocs()
	var sink time.Duration
	for b.Loop() {
		sink += c.Timeline().Total
	}
	_ = sink
}
