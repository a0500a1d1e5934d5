package exporter

import (
	"os"
	"regexp"
	"strings"

	"github.com/listenwatch/listenwatch/internal/procfs"
)

// Kubelet cgroup paths name the pod: ".../kubepods-burstable-pod<uid>.slice/..."
// (systemd driver, dashes as underscores) or ".../kubepods/burstable/pod<uid>/..."
// (cgroupfs driver).
var podRE = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)

// podUID returns the Kubernetes pod UID of a process from its cgroup, or
// "" outside Kubernetes. Joined with kube_pod_info{uid} it names the pod.
func podUID(cgroup string) string {
	for _, line := range strings.Split(cgroup, "\n") {
		if m := podRE.FindStringSubmatch(line); m != nil {
			return strings.ReplaceAll(m[1], "_", "-")
		}
	}
	return ""
}

func podOfPID(proc procfs.FS, pid uint32) string {
	if pid == 0 {
		return ""
	}
	b, err := os.ReadFile(proc.PID(pid, "cgroup"))
	if err != nil {
		return ""
	}
	return podUID(string(b))
}

func pod(proc procfs.FS, cache map[uint32]string, pid uint32) string {
	p, ok := cache[pid]
	if !ok {
		p = podOfPID(proc, pid)
		cache[pid] = p
	}
	return p
}
