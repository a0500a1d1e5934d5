package pods

import "testing"

func TestSandboxInfo(t *testing.T) {
	for _, tc := range []struct {
		name, info string
		pid        int
		path       string
	}{
		{"containerd", `{"pid": 4242, "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1234"}]}}}`, 4242, "/var/run/netns/cni-1234"},
		{"host network: no path", `{"pid": 7, "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}]}}}`, 7, ""},
		{"pid only", `{"pid": 9}`, 9, ""},
		{"not json", `pid=9`, 0, ""},
		{"empty", ``, 0, ""},
	} {
		pid, path := sandboxInfo(tc.info)
		if pid != tc.pid || path != tc.path {
			t.Errorf("%s: sandboxInfo = %d %q, want %d %q", tc.name, pid, path, tc.pid, tc.path)
		}
	}
}

// A nil resolver (no runtime) answers every lookup with nothing, at once.
func TestNilResolver(t *testing.T) {
	var r *Resolver
	if _, ok := r.Container("abc"); ok {
		t.Error("nil resolver found a container")
	}
	if _, ok := r.Netns(1); ok {
		t.Error("nil resolver found a netns")
	}
	n := NewNames(procfsAt("testdata/proc"), nil)
	if s, _, _ := n.Source(); s != "none" {
		t.Errorf("source %q, want none", s)
	}
}
