package pods

import (
	"strings"
	"testing"
)

const (
	id   = "3f1c6a9e0d8b47c2a5e4f6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091"
	id2  = "9d2e5b1a7c3f48e6b0a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d"
	uid  = "4c7a2e1b-93f0-4d2a-8a8e-0b6a7f7e2c11"
	uidU = "4c7a2e1b_93f0_4d2a_8a8e_0b6a7f7e2c11"
	// A static pod's UID is a hash of its manifest: 32 hex digits.
	static = "6d4b2f0c1e8a9b7d3c5e1f2a4b6c8d0e"
)

func TestParseCgroup(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup string
		want         Ref
	}{
		{"cgroupfs v2", "0::/kubepods/besteffort/pod" + uid + "/" + id, Ref{uid, id}},
		{"cgroupfs guaranteed (no qos level)", "0::/kubepods/pod" + uid + "/" + id, Ref{uid, id}},
		{"cgroupfs v1 lines", "12:memory:/kubepods/burstable/pod" + uid + "/" + id + "\n11:cpu,cpuacct:/kubepods/burstable/pod" + uid + "/" + id, Ref{uid, id}},
		{"v1 hybrid: name=systemd first, v2 last", "1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + id + "\n0::/kubepods/besteffort/pod" + uid + "/" + id, Ref{uid, id}},
		{"systemd containerd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", Ref{uid, id}},
		{"systemd guaranteed", "0::/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", Ref{uid, id}},
		{"systemd cri-o", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id + ".scope", Ref{uid, id}},
		{"systemd docker (dockershim, cri-dockerd)", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + id + ".scope", Ref{uid, id}},
		{"cri-o conmon is not the container", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-conmon-" + id + ".scope", Ref{uid, ""}},
		{"kind: nested in a docker container", "0::/docker/" + id2 + "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", Ref{uid, id}},
		{"kind cgroupfs", "0::/docker/" + id2 + "/kubepods/besteffort/pod" + uid + "/" + id, Ref{uid, id}},
		{"static pod cgroupfs", "0::/kubepods/burstable/pod" + static + "/" + id, Ref{static, id}},
		{"static pod systemd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + id + ".scope", Ref{static, id}},
		{"pod cgroup itself (no container)", "0::/kubepods/besteffort/pod" + uid, Ref{uid, ""}},
		{"sub-cgroup under the container", "0::/kubepods/besteffort/pod" + uid + "/" + id + "/init", Ref{uid, id}},

		// Outside a kubepods hierarchy only the container ID: the runtime's
		// labels say whether it is a pod's.
		{"plain docker container", "0::/docker/" + id, Ref{"", id}},
		{"containerd outside kubernetes", "0::/default/" + id, Ref{"", id}},
		{"kubelet with cgroupsPerQOS off", "0::/k8s.io/" + id, Ref{"", id}},
		{"docker scope, systemd", "0::/system.slice/docker-" + id + ".scope", Ref{"", id}},
		{"cri-o conmon outside kubepods", "0::/machine.slice/crio-conmon-" + id + ".scope", Ref{}},
		{"system service", "0::/system.slice/containerd.service", Ref{}},
		{"user session", "0::/user.slice/user-0.slice/session-3.scope", Ref{}},
		{"pod-looking name outside kubepods", "0::/system.slice/pod" + uid + ".service", Ref{}},
		{"kubepods qos level only", "0::/kubepods/besteffort", Ref{}},
		{"short uid", "0::/kubepods/besteffort/pod4c7a2e1b-93f0-4d2a-8a8e", Ref{}},
		{"uppercase is not a kubelet uid", "0::/kubepods/besteffort/pod" + strings.ToUpper(uid) + "/" + id, Ref{"", id}},
		{"short container id", "0::/kubepods/besteffort/pod" + uid + "/abc123", Ref{uid, ""}},
		{"empty", "", Ref{}},
		{"garbage", "no colons here\n::\n", Ref{}},
	} {
		if got := ParseCgroup(tc.cgroup + "\n"); got != tc.want {
			t.Errorf("%s: ParseCgroup(%q) = %+v, want %+v", tc.name, tc.cgroup, got, tc.want)
		}
	}
}

func FuzzParseCgroup(f *testing.F) {
	f.Add("0::/kubepods/besteffort/pod" + uid + "/" + id)
	f.Add("0::/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + id + ".scope")
	f.Fuzz(func(t *testing.T, s string) {
		r := ParseCgroup(s)
		if r.ContainerID != "" && len(r.ContainerID) != 64 {
			t.Fatalf("container id %q", r.ContainerID)
		}
		if r.PodUID != "" && !strings.Contains(s, "kubepods") {
			t.Fatalf("pod outside kubepods: %+v", r)
		}
		if strings.Contains(r.PodUID, "_") {
			t.Fatalf("uid %q", r.PodUID)
		}
	})
}
