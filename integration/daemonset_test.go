package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"github.com/listenwatch/listenwatch/loader"
	appsv1 "k8s.io/api/apps/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"sigs.k8s.io/yaml"
)

// The masked and read-only paths the kubelet asks for in every
// unprivileged container (pkg/securitycontext's defaults).
var (
	kubeletMaskedPaths = []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	kubeletReadonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// daemonSet reads deploy/base/daemonset.yaml.
func daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	b, err := os.ReadFile("../deploy/base/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatal(err)
	}
	return &ds
}

// TestDaemonSetInContainerd runs the image from `make image` the way the
// kubelet runs deploy/'s DaemonSet: through the CRI, with the manifest's
// own securityContext (only the listed capabilities, read-only root, no
// new privileges, seccomp RuntimeDefault, the kubelet's masked paths),
// hostPID and hostNetwork, and the manifest's args. Inside that box the
// agent must attach every stage, name a pod from the runtime's socket and
// count its overflow exactly.
func TestDaemonSetInContainerd(t *testing.T) {
	need(t, events.StageSYN)
	ctd := startContainerd(t)
	ds := daemonSet(t)
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]

	// The image, as make image builds it, imported as a node would.
	archive := filepath.Join(ctd.dir, "listenwatch-oci.tar")
	mk := exec.Command("go", "run", "./cmd/mkimage", "-arch", "amd64", "-o", archive, "-name", "localhost/listenwatch:dev")
	mk.Dir = ".."
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v: %s", err, out)
	}
	if out, err := exec.Command("ctr", "-a", ctd.sock, "-n", "k8s.io", "images", "import", archive).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v: %s", err, out)
	}

	web := &pod{uid: uuid(t), namespace: "shop", name: "web-0", container: "nginx"}
	ctd.runPod(t, web, podOpts{args: []string{"0.0.0.0:8080", "4"}})

	// The manifest's securityContext, translated as the kubelet does.
	sc := c.SecurityContext
	if spec.SecurityContext == nil || spec.SecurityContext.SeccompProfile == nil || string(spec.SecurityContext.SeccompProfile.Type) != "RuntimeDefault" {
		t.Fatal("the DaemonSet does not ask for seccomp RuntimeDefault")
	}
	// As the kubelet passes them: the manifest's names, without CAP_
	// (containerd prefixes them itself; "CAP_SYS_ADMIN" would be dropped).
	var add, drop []string
	for _, a := range sc.Capabilities.Add {
		add = append(add, string(a))
	}
	for _, d := range sc.Capabilities.Drop {
		drop = append(drop, string(d))
	}
	security := &runtimeapi.LinuxContainerSecurityContext{
		Capabilities:   &runtimeapi.Capability{AddCapabilities: add, DropCapabilities: drop},
		Privileged:     *sc.Privileged,
		RunAsUser:      &runtimeapi.Int64Value{Value: *sc.RunAsUser},
		ReadonlyRootfs: *sc.ReadOnlyRootFilesystem,
		NoNewPrivs:     !*sc.AllowPrivilegeEscalation,
		Seccomp:        &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
		MaskedPaths:    kubeletMaskedPaths,
		ReadonlyPaths:  kubeletReadonlyPaths,
	}
	// The manifest's args, on a free port (hostNetwork: the test's own
	// network namespace) and with this containerd's socket.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var args []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--web.listen-address=") {
			a = "--web.listen-address=" + addr
		}
		args = append(args, a)
	}
	args = append(args, "--cri-endpoint=unix://"+ctd.sock)
	agent := &pod{uid: uuid(t), namespace: "listenwatch", name: "listenwatch-node1", container: c.Name}
	ctd.runPod(t, agent, podOpts{
		hostNetwork: spec.HostNetwork, hostPID: spec.HostPID,
		image: "localhost/listenwatch:dev", command: []string{}, args: args, security: security,
		mounts: []*runtimeapi.Mount{{ContainerPath: ctd.dir, HostPath: ctd.dir, Readonly: true}},
	})

	// The box is real: seccomp filtering, no new privileges, and exactly
	// the capabilities listed, as the kernel sees the agent.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", agent.pid))
	if err != nil {
		t.Fatal(err)
	}
	var wantCaps uint64
	for _, cp := range loader.Capabilities {
		wantCaps |= 1 << cp.Bit
	}
	for _, want := range []string{"Seccomp:\t2", "NoNewPrivs:\t1", fmt.Sprintf("CapEff:\t%016x", wantCaps), fmt.Sprintf("CapBnd:\t%016x", wantCaps)} {
		if !strings.Contains(string(status), want+"\n") {
			t.Errorf("agent container: no %q in its /proc status:\n%s", want, grepLines(string(status), "Cap")+"\n"+grepLines(string(status), "Seccomp")+"\n"+grepLines(string(status), "NoNewPrivs"))
		}
	}
	eventually(t, settle, func() (bool, string) {
		body, err := get("http://" + addr + "/metrics")
		return err == nil && strings.Contains(body, "listenwatch_hook_info"),
			fmt.Sprintf("the agent container does not serve metrics: %v; its log:\n%s", err, ctd.containerLog(agent))
	})
	body, _ := get("http://" + addr + "/metrics")
	if strings.Contains(body, `mode="none"`) {
		t.Errorf("a stage did not attach inside the DaemonSet's securityContext:\n%s\nlog:\n%s", grepLines(body, "listenwatch_hook_info"), ctd.containerLog(agent))
	}
	webNS, err := netnstest.OpenPath(fmt.Sprintf("/proc/%d/ns/net", web.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer webNS.Close()
	info := fmt.Sprintf(`comm="podapp",container="nginx",namespace="shop",netns="%d",pid="%d",pod="web-0",pod_uid="%s",port="8080"`, webNS.Inode, web.pid, web.uid)
	eventually(t, settle, func() (bool, string) {
		body, _ := get("http://" + addr + "/metrics")
		return strings.Contains(body, info), fmt.Sprintf("no listener_info {%s}:\n%s", info, grepLines(body, "listenwatch_listener_info"))
	})

	lo := overflowScraped(t, webNS, netip.MustParseAddrPort("127.0.0.1:8080"), netip.MustParseAddrPort("0.0.0.0:8080"), "http://"+addr+"/metrics")
	t.Logf("the DaemonSet's container (caps %v, read-only root, seccomp RuntimeDefault): every stage attached, pod shop/web-0 named, %d overflows as the kernel counted", add, lo)
}
