// Package pods names the Kubernetes pod and container a process runs in:
// the pod UID and container ID come from the process's cgroup, the names
// from the node's container runtime over the CRI (the kubelet's own API),
// so no Kubernetes API access or RBAC is needed and names keep working
// while the API server is down.
package pods

import (
	"regexp"
	"strings"
)

// Ref is what a cgroup path says about a process: its pod's UID and its
// container's ID. Either may be empty.
type Ref struct {
	PodUID      string // 8-4-4-4-12 UUID, or 32 hex digits for static pods
	ContainerID string // 64 hex digits
}

// A pod segment: "pod<uid>" (cgroupfs driver) or
// "kubepods-<qos>-pod<uid>.slice" / "kubelet-kubepods-...-pod<uid>.slice"
// (systemd driver, dashes of the UID written as underscores). Static pods
// (manifests on the node) have a UID of 32 hex digits (a hash), not a UUID.
var podSegment = regexp.MustCompile(`^(?:[a-z0-9_-]*-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})(?:\.slice)?$`)

// A container segment directly under the pod: the bare ID (cgroupfs), or a
// systemd scope named by the runtime. crio-conmon-<id>.scope is CRI-O's
// monitor process, not the container, and does not match.
var containerSegment = regexp.MustCompile(`^(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$`)

// ParseCgroup reads /proc/<pid>/cgroup (v1 lines, the v2 "0::" line, or
// both) and returns the pod and container of the first line that names a
// pod under a kubepods hierarchy. Without one (a kubelet with
// cgroupsPerQOS off puts containers in /k8s.io/<id>; plain containerd or
// docker), only the container ID of the last container-looking segment is
// returned: the runtime's own labels then tell whether it is a pod's. Nested hierarchies (kind runs the node in
// a docker container: /docker/<id>/kubelet.slice/...) are handled by taking
// the container segment right after the pod's, never an outer one.
func ParseCgroup(content string) Ref {
	var fallback Ref
	for line := range strings.SplitSeq(content, "\n") {
		// hierarchy-ID:controllers:path; the path may itself hold ':'.
		_, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		_, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if strings.Contains(path, "kubepods") {
			if r := parsePath(path); r.PodUID != "" {
				return r
			}
		}
		if fallback.ContainerID == "" {
			fallback.ContainerID = lastContainer(path)
		}
	}
	return fallback
}

// lastContainer is the ID of the deepest container-looking segment.
func lastContainer(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i := len(segs) - 1; i >= 0; i-- {
		if c := containerSegment.FindStringSubmatch(segs[i]); c != nil {
			return c[1]
		}
	}
	return ""
}

func parsePath(path string) Ref {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, s := range segs {
		m := podSegment.FindStringSubmatch(s)
		if m == nil {
			continue
		}
		r := Ref{PodUID: strings.ReplaceAll(m[1], "_", "-")}
		if i+1 < len(segs) {
			if c := containerSegment.FindStringSubmatch(segs[i+1]); c != nil {
				r.ContainerID = c[1]
			}
		}
		return r
	}
	return Ref{}
}
