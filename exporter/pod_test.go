package exporter

import (
	"testing"

	"github.com/listenwatch/listenwatch/internal/procfs"
)

func TestPodUID(t *testing.T) {
	for in, want := range map[string]string{
		"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4c7a2e1b_93f0_4d2a_8a8e_0b6a7f7e2c11.slice/cri-containerd-abc.scope\n": "4c7a2e1b-93f0-4d2a-8a8e-0b6a7f7e2c11",
		"12:memory:/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/0123456789abcdef\n":                                               "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
		"0::/system.slice/nginx.service\n": "",
		"":                                 "",
	} {
		if got := podUID(in); got != want {
			t.Errorf("podUID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPodOfPID(t *testing.T) {
	proc := procfs.New("testdata/proc")
	for pid, want := range map[uint32]string{
		4242: "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", // cgroupfs driver, v1 and v2 lines
		4343: "4c7a2e1b-93f0-4d2a-8a8e-0b6a7f7e2c11", // systemd driver
		4444: "",                                     // not in a pod
		4545: "",                                     // gone
		0:    "",
	} {
		if got := podOfPID(proc, pid); got != want {
			t.Errorf("pid %d: pod %q, want %q", pid, got, want)
		}
	}
}
