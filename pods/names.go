package pods

import (
	"os"

	"github.com/listenwatch/listenwatch/internal/procfs"
)

// Names resolves a process, or a network namespace, to its pod. The
// resolver may be nil (no runtime): then only the pod UID is known, from
// the cgroup.
type Names struct {
	proc procfs.FS
	cri  *Resolver
}

// NewNames reads cgroups under proc and names from cri (nil: none).
func NewNames(proc procfs.FS, cri *Resolver) *Names { return &Names{proc: proc, cri: cri} }

// Of returns the pod of a running process (zero outside Kubernetes or when
// the process is gone). It reads /proc/<pid>/cgroup: callers cache per scrape.
func (n *Names) Of(pid uint32) Pod {
	if n == nil || pid == 0 {
		return Pod{}
	}
	b, err := os.ReadFile(n.proc.PID(pid, "cgroup"))
	if err != nil {
		return Pod{}
	}
	ref := ParseCgroup(string(b))
	if ref.PodUID == "" && ref.ContainerID == "" {
		return Pod{}
	}
	if p, ok := n.cri.Container(ref.ContainerID); ok && (p.UID != "" || ref.PodUID != "") {
		if p.UID == "" {
			p.UID = ref.PodUID
		}
		return p
	}
	return Pod{UID: ref.PodUID}
}

// OfNetns returns the pod whose sandbox owns a network namespace: a
// listener whose processes are gone is still named when its namespace is a
// pod's.
func (n *Names) OfNetns(ino uint32) Pod {
	if n == nil {
		return Pod{}
	}
	p, _ := n.cri.Netns(uint64(ino))
	return p
}

// Source says where names come from: "cri" (with the endpoint and the
// runtime's name and version) or "none" (pod UIDs from cgroups only).
func (n *Names) Source() (source, endpoint, runtime string) {
	if n == nil || n.cri == nil {
		return "none", "", ""
	}
	return "cri", n.cri.Endpoint, n.cri.Runtime
}

// Resolver is the CRI cache behind the names, or nil.
func (n *Names) Resolver() *Resolver {
	if n == nil {
		return nil
	}
	return n.cri
}
