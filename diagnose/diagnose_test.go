package diagnose

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/rs/zerolog"
)

var key = events.ListenerKey{Netns: 1, Addr: netip.MustParseAddr("10.0.0.5"), Port: 8080}

func TestDiagnose(t *testing.T) {
	base := events.Listener{Key: key, PID: 4242, Comm: "nginx", Backlog: 128, RequestedBacklog: 511}
	withOverflow := base
	withOverflow.Drops[events.DropAcceptQueueSYN] = 500
	withOverflow.Drops[events.DropAcceptQueueACK] = 23
	ownBacklog := withOverflow
	ownBacklog.RequestedBacklog = 128
	synq := base
	synq.Drops[events.DropSYNQueueFull] = 1200
	cookies := base
	cookies.CookiesSent = 7
	emfile := base
	emfile.AcceptEMFILE = 37
	enfile := base
	enfile.AcceptENFILE = 2
	settings := Settings{Somaxconn: 128, MaxSynBacklog: 256, Syncookies: 0}

	tests := []struct {
		name  string
		cur   events.Listener
		s     Settings
		p     Process
		cause Cause
		knob  string
		want  string
	}{
		{"capped by somaxconn", withOverflow, settings, Process{Limit: -1}, CauseAcceptOverflow, "net.core.somaxconn",
			"overflowed 523 times in 1m0s; effective backlog 128 = min(listen() 511, net.core.somaxconn 128): raise net.core.somaxconn"},
		{"application's own backlog", ownBacklog, Settings{Somaxconn: 4096, Syncookies: 1}, Process{Limit: -1}, CauseAcceptOverflow, "listen_backlog",
			"raise the application's listen() backlog"},
		{"syn queue, cookies off", synq, settings, Process{Limit: -1}, CauseSYNQueueDrop, "net.ipv4.tcp_syncookies",
			"full 1200 times in 1m0s with syncookies off (net.ipv4.tcp_syncookies 0): enable net.ipv4.tcp_syncookies or raise the backlog (effective 128; net.ipv4.tcp_max_syn_backlog 256)"},
		{"cookies", cookies, Settings{Somaxconn: 128, Syncookies: 1}, Process{Limit: -1}, CauseSYNCookies, "listen_backlog", "7 SYN cookies sent"},
		{"emfile", emfile, settings, Process{OpenFDs: 1024, Limit: 1024}, CauseEMFILE, "RLIMIT_NOFILE",
			"failed with EMFILE 37 times in 1m0s; pid 4242 has 1024/1024 fds: raise RLIMIT_NOFILE"},
		{"enfile", enfile, settings, Process{Limit: -1}, CauseENFILE, "fs.file-max", "raise fs.file-max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := Diagnose(base, tt.cur, time.Minute, tt.s, tt.p)
			if len(f) != 1 {
				t.Fatalf("%d findings: %+v", len(f), f)
			}
			if f[0].Cause != tt.cause || f[0].Knob != tt.knob || !strings.Contains(f[0].Message, tt.want) {
				t.Fatalf("got %s/%s %q\nwant %s/%s containing %q", f[0].Cause, f[0].Knob, f[0].Message, tt.cause, tt.knob, tt.want)
			}
		})
	}
}

func TestHealthyListenerGetsNoHint(t *testing.T) {
	l := events.Listener{Key: key, SYNs: 1e6, Handshakes: 1e6, Accepted: 1e6, SynackRetrans: 3}
	prev := l
	prev.SYNs, prev.Accepted = 0, 0
	if f := Diagnose(prev, l, time.Minute, Settings{Somaxconn: 4096}, Process{Limit: -1}); len(f) != 0 {
		t.Fatalf("healthy listener diagnosed: %+v", f)
	}
}

func TestUnknownSettingsNotInvented(t *testing.T) {
	cur := events.Listener{Key: key, Backlog: 128}
	cur.Drops[events.DropAcceptQueueSYN] = 1
	f := Diagnose(events.Listener{Key: key}, cur, time.Minute, Settings{Somaxconn: -1, Syncookies: -1, MaxSynBacklog: -1}, Process{Limit: -1})
	if len(f) != 1 || !strings.Contains(f[0].Message, "net.core.somaxconn unknown") || strings.Contains(f[0].Message, "= min(") {
		t.Fatalf("%+v", f)
	}
}

// fakeSource hands the doctor a scripted sequence of readings.
type fakeSource struct{ readings [][]events.Listener }

func (f *fakeSource) Listeners() ([]events.Listener, error) {
	ls := f.readings[0]
	if len(f.readings) > 1 {
		f.readings = f.readings[1:]
	}
	return ls, nil
}

// TestStepAfterRestart: a server hit EMFILE 30 times and exited; a new one
// listened on the same address (its counters start from zero). No counter
// delta may wrap around: the restart is a new baseline, and what the new
// listener counted since is reported as it is.
func TestStepAfterRestart(t *testing.T) {
	old := events.Listener{Key: key, PID: 1, AcceptEMFILE: 30, CookiesSent: 4, Sockets: 1}
	old.Drops[events.DropAcceptQueueSYN] = 2
	reopened := events.Listener{Key: key, PID: 2, Sockets: 1}
	reopened.Drops[events.DropAcceptQueueSYN] = 5 // more drops than before, yet a restart
	again := reopened
	again.AcceptEMFILE = 3
	src := &fakeSource{readings: [][]events.Listener{{old}, {reopened}, {again}}}
	d := New(src, procfs.FS{}, time.Second, zerolog.Nop())
	if fs := d.Step(); len(fs) != 0 {
		t.Fatalf("baseline reported findings: %+v", fs)
	}
	fs := d.Step()
	for _, f := range fs {
		if f.Count > 1000 {
			t.Errorf("wrapped delta: %s", f.Message)
		}
	}
	if len(fs) != 1 || fs[0].Cause != CauseAcceptOverflow || fs[0].Count != 5 {
		t.Errorf("after the restart: %+v, want one accept-queue overflow of 5 (all counted since the restart)", fs)
	}
	fs = d.Step()
	if len(fs) != 1 || fs[0].Cause != CauseEMFILE || fs[0].Count != 3 {
		t.Errorf("after that: %+v, want EMFILE 3", fs)
	}
}

func TestDelta(t *testing.T) {
	for _, c := range []struct {
		cur, prev, want uint64
		ok              bool
	}{{5, 3, 2, true}, {3, 3, 0, true}, {0, 30, 0, false}, {1 << 63, 0, 1 << 63, true}} {
		if d, ok := events.Delta(c.cur, c.prev); d != c.want || ok != c.ok {
			t.Errorf("Delta(%d, %d) = %d, %v; want %d, %v", c.cur, c.prev, d, ok, c.want, c.ok)
		}
	}
}

func TestReadProcess(t *testing.T) {
	proc := procfs.New("testdata/proc")
	if p := readProcess(proc, 4242); p.OpenFDs != 5 || p.Limit != 1024 {
		t.Errorf("pid 4242: %+v, want 5 fds of 1024", p)
	}
	if p := readProcess(proc, 4343); p.OpenFDs != -1 || p.Limit != -1 {
		t.Errorf("a process that is gone: %+v, want unknown", p)
	}
}

func TestOwnerNamesThePod(t *testing.T) {
	l := events.Listener{Key: events.ListenerKey{Netns: 1, Addr: netip.MustParseAddr("0.0.0.0"), Port: 80}, PID: 7, Comm: "nginx"}
	for _, tc := range []struct {
		p    pods.Pod
		want string
	}{
		{pods.Pod{UID: "u", Namespace: "shop", Name: "web-0", Container: "nginx"}, "(pod shop/web-0 container nginx, pid 7 nginx)"},
		{pods.Pod{UID: "u", Namespace: "shop", Name: "web-0"}, "(pod shop/web-0, pid 7 nginx)"},
		{pods.Pod{UID: "u"}, "(pod uid u, pid 7 nginx)"},
		{pods.Pod{}, "(pid 7 nginx)"},
	} {
		if got := owner(l, tc.p); !strings.HasSuffix(got, tc.want) {
			t.Errorf("owner(%+v) = %q, want suffix %q", tc.p, got, tc.want)
		}
	}
}
