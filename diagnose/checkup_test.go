package diagnose

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/listenwatch/listenwatch/events"
)

func TestCheckup(t *testing.T) {
	k := func(port uint16) events.ListenerKey {
		return events.ListenerKey{Netns: 7, Addr: netip.MustParseAddr("0.0.0.0"), Port: port}
	}
	ls := []events.Listener{
		{Key: k(1), Sockets: 1, Backlog: 16, RequestedBacklog: 128, PID: 10, Comm: "capped"},
		{Key: k(2), Sockets: 1, Backlog: 16, PID: 11, Comm: "predates"}, // requested unknown, equals somaxconn
		{Key: k(3), Sockets: 1, Backlog: 8, RequestedBacklog: 8, AcceptQueueLen: 5, PID: 12, Comm: "slow"},
		{Key: k(4), Sockets: 1, Backlog: 8, RequestedBacklog: 8, PID: 13, Comm: "leaky"},
		{Key: k(5), Sockets: 1, Backlog: 8, RequestedBacklog: 8, AcceptQueueLen: 4, PID: 14, Comm: "healthy"},
		{Key: k(6), Sockets: 0, Backlog: 16, RequestedBacklog: 128, PID: 15, Comm: "closed"},
	}
	settings := map[uint32]Settings{7: {Somaxconn: 16}}
	procs := map[uint32]Process{13: {OpenFDs: 900, Limit: 1024}, 14: {OpenFDs: 819, Limit: 1024}}
	got := Checkup(ls, settings, procs, map[uint32]string{12: "pod shop/web-0"})
	want := []struct {
		port             uint16
		kind, knob, text string
	}{
		{4, RiskFDsNearLimit, "RLIMIT_NOFILE", "900 of 1024 file descriptors"},
		{3, RiskQueueHalfFull, "listen_backlog", "(pod shop/web-0, pid 12 slow): accept queue 5 of 8"},
		{1, RiskBacklogCapped, "net.core.somaxconn", "asked for a backlog of 128 but net.core.somaxconn 16 caps it at 16"},
		{2, RiskBacklogCapped, "net.core.somaxconn", "effective backlog 16 equals net.core.somaxconn"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d risks, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Listener.Port != w.port || g.Kind != w.kind || g.Knob != w.knob || !strings.Contains(g.Message, w.text) {
			t.Errorf("risk %d: %+v, want port %d %s %s %q", i, g, w.port, w.kind, w.knob, w.text)
		}
	}
	if r := Checkup(ls[4:5], map[uint32]Settings{7: {Somaxconn: 4096}}, procs, nil); len(r) != 0 {
		t.Errorf("healthy listener at risk: %+v", r)
	}
}
