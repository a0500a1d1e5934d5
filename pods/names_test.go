package pods

import (
	"testing"

	"github.com/listenwatch/listenwatch/internal/procfs"
)

func procfsAt(root string) procfs.FS { return procfs.New(root) }

func TestNamesOfWithoutRuntime(t *testing.T) {
	n := NewNames(procfsAt("testdata/proc"), nil)
	for pid, want := range map[uint32]Pod{
		4242: {UID: "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"}, // cgroupfs driver, v1 and v2 lines
		4343: {UID: "4c7a2e1b-93f0-4d2a-8a8e-0b6a7f7e2c11"}, // systemd driver
		4444: {},                                            // not in a pod
		4545: {},                                            // gone
		0:    {},
	} {
		if got := n.Of(pid); got != want {
			t.Errorf("pid %d: %+v, want %+v", pid, got, want)
		}
	}
	if p := n.OfNetns(4026531840); p != (Pod{}) {
		t.Errorf("netns without a runtime: %+v", p)
	}
}
