package exporter

import (
	"regexp"
	"testing"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// FuzzPodUID: any cgroup file gives "" or a well-formed pod UID.
func FuzzPodUID(f *testing.F) {
	f.Add("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4c7a2e1b_93f0_4d2a_8a8e_0b6a7f7e2c11.slice/cri-containerd-abc.scope\n")
	f.Add("12:memory:/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/0123\n")
	f.Add("0::/system.slice/nginx.service\n")
	f.Fuzz(func(t *testing.T, cgroup string) {
		if uid := podUID(cgroup); uid != "" && !uuidRE.MatchString(uid) {
			t.Fatalf("podUID(%q) = %q", cgroup, uid)
		}
	})
}
