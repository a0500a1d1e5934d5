package exporter

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts("80, 443,8000-8100")
	if err != nil || len(got) != 3 || got[2] != (PortRange{8000, 8100}) || got[0] != (PortRange{80, 80}) {
		t.Fatalf("ParsePorts = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "65536", "http", "90-80", "80,", "1-x"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) accepted", bad)
		}
	}
}

// TestFilter: a filtered listener has no series at all, and the count of
// filtered listeners is exported.
func TestFilter(t *testing.T) {
	ssh := events.ListenerKey{Netns: 4026531840, Addr: netip.MustParseAddr("0.0.0.0"), Port: 22}
	src := newFake()
	src.listeners = append(src.listeners, events.Listener{Key: ssh, PID: 4444, Comm: "sshd", Sockets: 1})
	shop, _ := ParseNamespaces("shop|web-.*")
	empty, _ := ParseNamespaces("")
	for _, tc := range []struct {
		name               string
		f                  Filter
		exported, filtered int
	}{
		{"none", Filter{}, 2, 0},
		{"ports", Filter{Ports: []PortRange{{8000, 8100}}}, 1, 1},
		// Without a runtime every namespace is "": include "shop" keeps none.
		{"include shop", Filter{IncludeNamespaces: shop}, 0, 2},
		{"exclude non-pods", Filter{ExcludeNamespaces: empty}, 0, 2},
		{"include non-pods", Filter{IncludeNamespaces: empty}, 2, 0},
	} {
		c := New(src, procfs.New("testdata/proc"), zerolog.Nop()).WithOptions(Options{Filter: tc.f})
		c.Observe(&events.Conn{Listener: ssh, Flags: events.FlagHandshake, SYNACKSent: 1, Established: 2, Accepted: 3})
		if n := testutil.CollectAndCount(c, "listenwatch_listener_syns_received_total"); n != tc.exported {
			t.Errorf("%s: %d listeners with series, want %d", tc.name, n, tc.exported)
		}
		if n := testutil.CollectAndCount(c, "listenwatch_syn_to_accept_seconds"); tc.f.Ports != nil && n != 0 {
			t.Errorf("%s: a filtered listener kept its histogram", tc.name)
		}
		want := `
# HELP listenwatch_listeners Listeners known to the kernel side, by state: exported (with series) or filtered (left out by --listen-ports or the namespace selectors).
# TYPE listenwatch_listeners gauge
listenwatch_listeners{state="exported"} ` + itoa(tc.exported) + `
listenwatch_listeners{state="filtered"} ` + itoa(tc.filtered) + "\n"
		if err := testutil.CollectAndCompare(c, strings.NewReader(want), "listenwatch_listeners"); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func itoa(n int) string { return string(rune('0' + n)) }
