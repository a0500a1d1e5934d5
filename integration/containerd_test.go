package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/diagnose"
	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/exporter"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	"github.com/listenwatch/listenwatch/internal/ociimage"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/listenwatch/listenwatch/pods"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// containerd is a private containerd (its own root, state, socket, CNI
// bridge) started by a test, driven over the CRI as the kubelet drives it.
type containerd struct {
	dir, sock string
	bridge    string
	cmd       *exec.Cmd
	conn      *grpc.ClientConn
	rt        runtimeapi.RuntimeServiceClient
	shims     map[string]bool // /run/containerd/s before start: ours are the new ones
	sandboxes []string
	madeDir   string // the socket's directory, when this test created it
}

const pauseImage = "localhost/pause:test"

// startContainerd starts containerd with the podapp image imported, or
// skips the test with the reason when containerd, runc or the CNI plugins
// are not installed (scripts/install-deps.sh installs them).
func startContainerd(t *testing.T) *containerd { return startContainerdAt(t, "") }

// startContainerdAt is startContainerd with its socket at sock ("": in its
// temp dir). The Kubernetes end-to-end test uses the standard path, where
// the DaemonSet, as users apply it, looks for the runtime.
func startContainerdAt(t *testing.T, sock string) *containerd {
	t.Helper()
	for _, bin := range []string{"containerd", "ctr", "runc", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("containerd test skipped: %s not installed (Debian packages containerd, runc, containernetworking-plugins; scripts/install-deps.sh)", bin)
		}
	}
	// The socket path must fit in sun_path (108 bytes): a short dir.
	dir, err := os.MkdirTemp("", "lwctd")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{dir: dir, sock: filepath.Join(dir, "c.sock"), bridge: fmt.Sprintf("lwcni%d", os.Getpid()%10000), shims: map[string]bool{}}
	if sock != "" {
		if _, err := os.Stat(sock); err == nil {
			t.Fatalf("%s exists: another containerd runs on this host; stop it first", sock)
		}
		if _, err := os.Stat(filepath.Dir(sock)); err != nil {
			c.madeDir = filepath.Dir(sock)
		}
		if err := os.MkdirAll(filepath.Dir(sock), 0o711); err != nil {
			t.Fatal(err)
		}
		c.sock = sock
	}
	if es, err := os.ReadDir("/run/containerd/s"); err == nil {
		for _, e := range es {
			c.shims[e.Name()] = true
		}
	}
	t.Cleanup(func() { c.stop(t) })

	img := buildPodapp(t, dir)
	if err := os.MkdirAll(filepath.Join(dir, "cni"), 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "lwtest", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.213.%d.0/24"}]]}}]}`,
		c.bridge, filepath.Join(dir, "ipam"), os.Getpid()%250)
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", pauseImage, filepath.Join(dir, "runc"), filepath.Join(dir, "cni"))
	for name, body := range map[string]string{"cni/10-lwtest.conflist": conflist, "config.toml": config} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+c.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c.conn = conn // closed by stop, after the sandboxes are removed
	c.rt = runtimeapi.NewRuntimeServiceClient(conn)
	eventually(t, settle, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
		return err == nil, fmt.Sprintf("containerd does not answer Version: %v (log: %s)", err, c.log())
	})
	if out, err := exec.Command("ctr", "-a", c.sock, "-n", "k8s.io", "images", "import", img).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v: %s", err, out)
	}
	return c
}

func (c *containerd) log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "containerd.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// podappBinary compiles integration/podapp statically into dir.
func podappBinary(t *testing.T, dir string) string {
	t.Helper()
	needGo(t)
	bin := filepath.Join(dir, "podapp")
	cmd := exec.Command("go", "build", "-o", bin, "./podapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build podapp: %v: %s", err, out)
	}
	return bin
}

// buildPodapp writes podapp as the OCI archive of localhost/pause:test
// (the pause process and the app).
func buildPodapp(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(podappBinary(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := ociimage.Write(&b, ociimage.Image{
		Name: pauseImage, Arch: "amd64", Entrypoint: []string{"/podapp"},
		Files: []ociimage.File{{Path: "podapp", Mode: 0o755, Data: data}},
	}); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "podapp-oci.tar")
	if err := os.WriteFile(img, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// stop removes every sandbox, stops containerd by its pid and removes what
// it left outside its directory: the bridge, shim sockets, pod cgroups.
func (c *containerd) stop(t *testing.T) {
	if c.cmd != nil && c.cmd.Process != nil && c.rt != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		l, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Errorf("cleanup: list sandboxes: %v", err)
		} else {
			for _, s := range l.Items {
				c.sandboxes = append(c.sandboxes, s.Id)
				c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id})
				if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
					t.Errorf("cleanup: remove sandbox %s: %v", s.Id, err)
				}
			}
		}
		cancel()
		c.conn.Close()
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
	}
	exec.Command("ip", "link", "del", c.bridge).Run()
	// The CNI plugins cache results outside the config; a sandbox torn
	// down normally removes its own, this catches one that was not.
	for _, id := range c.sandboxes {
		ms, _ := filepath.Glob("/var/lib/cni/results/*-" + id + "-*")
		for _, m := range ms {
			os.Remove(m)
		}
	}
	if es, err := os.ReadDir("/run/containerd/s"); err == nil {
		for _, e := range es {
			if !c.shims[e.Name()] {
				os.Remove(filepath.Join("/run/containerd/s", e.Name()))
			}
		}
	}
	removeKubepodsCgroups()
	if c.sock != filepath.Join(c.dir, "c.sock") {
		os.Remove(c.sock)
		os.Remove(c.sock + ".ttrpc")
		if c.madeDir != "" {
			os.RemoveAll(c.madeDir) // created for this containerd: its runc and shim dirs too
		}
	}
	// Mounts under state (netns, rootfs) are gone with their sandboxes;
	// anything still mounted is unmounted before the tree is removed.
	unmountUnder(c.dir)
	if err := os.RemoveAll(c.dir); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// removeKubepodsCgroups removes the empty kubepods cgroup directories the
// sandboxes left, deepest first, on every hierarchy. rmdir fails on a
// cgroup that still has processes or children, so nothing in use goes.
func removeKubepodsCgroups() {
	// kubepods: the sandboxes' cgroup parent; k8s.io: containerd's own,
	// used when the kubelet runs with cgroupsPerQOS off (make e2e).
	var roots []string
	for _, name := range []string{"kubepods", "k8s.io"} {
		r, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
		roots = append(roots, r...)
		if _, err := os.Stat("/sys/fs/cgroup/" + name); err == nil {
			roots = append(roots, "/sys/fs/cgroup/"+name)
		}
	}
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			unix.Rmdir(d)
		}
	}
}

func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var ms []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			ms = append(ms, f[1])
		}
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
	for _, m := range ms {
		unix.Unmount(m, unix.MNT_DETACH)
	}
}

// pod is a sandbox and its one container, created as the kubelet would.
type pod struct {
	uid, namespace, name, container string
	sandbox, id                     string
	pid                             int
}

// podOpts is what differs between the pods of the tests.
type podOpts struct {
	hostNetwork, hostPID bool
	image                string   // default: the podapp image
	command, args        []string // default: /podapp
	security             *runtimeapi.LinuxContainerSecurityContext
	mounts               []*runtimeapi.Mount
}

// runPod creates a sandbox (pod network, or the node's for hostNetwork)
// with kubelet-style labels and cgroup parent, and starts one container.
func (c *containerd) runPod(t *testing.T, p *pod, o podOpts) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nsOpts := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	if o.hostNetwork {
		nsOpts.Network = runtimeapi.NamespaceMode_NODE
	}
	if o.hostPID {
		nsOpts.Pid = runtimeapi.NamespaceMode_NODE
	}
	labels := map[string]string{
		"io.kubernetes.pod.namespace": p.namespace, "io.kubernetes.pod.name": p.name, "io.kubernetes.pod.uid": p.uid,
	}
	sc := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: p.name, Namespace: p.namespace, Uid: p.uid},
		Labels:   labels, LogDirectory: filepath.Join(c.dir, "logs", p.uid),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    "/kubepods/besteffort/pod" + p.uid,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: nsOpts},
		},
	}
	sb, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sc})
	if err != nil {
		t.Fatalf("RunPodSandbox %s/%s: %v (log: %s)", p.namespace, p.name, err, c.log())
	}
	p.sandbox = sb.PodSandboxId
	clabels := map[string]string{"io.kubernetes.container.name": p.container}
	for k, v := range labels {
		clabels[k] = v
	}
	if o.image == "" {
		o.image = pauseImage
	}
	if o.command == nil {
		o.command = []string{"/podapp"}
	}
	if o.security == nil {
		o.security = &runtimeapi.LinuxContainerSecurityContext{}
	}
	o.security.NamespaceOptions = nsOpts
	cr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.sandbox, SandboxConfig: sc,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: p.container},
			Image:    &runtimeapi.ImageSpec{Image: o.image},
			Command:  o.command, Args: o.args, Mounts: o.mounts,
			Labels: clabels, LogPath: p.container + ".log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: o.security},
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", p.container, err)
	}
	p.id = cr.ContainerId
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.id}); err != nil {
		t.Fatalf("StartContainer %s: %v (log: %s)", p.container, err, c.log())
	}
	st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: p.id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil || info.Pid == 0 {
		t.Fatalf("container %s: no pid in verbose status (%v)", p.container, err)
	}
	p.pid = info.Pid
}

// containerLog is what a container wrote (its CRI log file).
func (c *containerd) containerLog(p *pod) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "logs", p.uid, p.container+".log"))
	return string(b)
}

// stopContainer stops the pod's container (its listener closes) and keeps
// the sandbox.
func (c *containerd) stopContainer(t *testing.T, p *pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: p.id, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
}

func uuid(t *testing.T) string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// infoOf returns the listener_info series of one listener from reg.
func infoOf(t *testing.T, reg *prometheus.Registry, k events.ListenerKey) []map[string]string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, mf := range mfs {
		if mf.GetName() != "listenwatch_listener_info" {
			continue
		}
		for _, m := range mf.Metric {
			if !labelsMatch(m, map[string]string{"netns": fmt.Sprint(k.Netns), "addr": k.Addr.String(), "port": fmt.Sprint(k.Port)}) {
				continue
			}
			l := map[string]string{}
			for _, lp := range m.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			out = append(out, l)
		}
	}
	return out
}

func gaugeOf(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.Metric
		}
	}
	return nil
}

// TestPodNamesFromContainerd: pods created over the CRI as the kubelet
// creates them; listener_info and the diagnosis must name their namespace,
// pod and container (pod network, hostNetwork, static-style UID), the
// drop counts must stay exact, and without a runtime only names are lost.
func TestPodNamesFromContainerd(t *testing.T) {
	need(t, events.StageSYN)
	ctd := startContainerd(t)

	web := &pod{uid: uuid(t), namespace: "shop", name: "web-7d9f8-x2k4q", container: "nginx"}
	ctd.runPod(t, web, podOpts{args: []string{"0.0.0.0:8080", "4"}})
	host := &pod{uid: uuid(t), namespace: "kube-system", name: "node-agent-abcde", container: "agent"}
	hostPort := 20000 + os.Getpid()%20000
	ctd.runPod(t, host, podOpts{hostNetwork: true, args: []string{fmt.Sprintf("127.0.0.1:%d", hostPort), "16"}})
	// A static pod (a manifest on the node): its UID is a 32-hex hash.
	b := make([]byte, 16)
	rand.Read(b)
	static := &pod{uid: hex.EncodeToString(b), namespace: "kube-system", name: "etcd-node1", container: "etcd"}
	ctd.runPod(t, static, podOpts{args: []string{"0.0.0.0:2379", "8"}})

	names, err := pods.Discover(context.Background(), "unix://"+ctd.sock, procfs.FS{}, time.Minute, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := names.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	pn := pods.NewNames(procfs.FS{}, names)
	col := exporter.New(tracer, procfs.FS{}, zerolog.Nop()).WithPods(pn)
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	bare := prometheus.NewRegistry() // the same, with no runtime socket
	bare.MustRegister(exporter.New(tracer, procfs.FS{}, zerolog.Nop()))

	webNS, err := netnstest.OpenPath(fmt.Sprintf("/proc/%d/ns/net", web.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer webNS.Close()
	staticNS, err := netnstest.OpenPath(fmt.Sprintf("/proc/%d/ns/net", static.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer staticNS.Close()
	hostNS, err := netnstest.OpenPath(fmt.Sprintf("/proc/%d/ns/net", host.pid))
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()
	tap.watch(t, webNS.Inode)

	any4 := netip.MustParseAddr("0.0.0.0")
	webKey := events.ListenerKey{Netns: webNS.Inode, Addr: any4, Port: 8080}
	staticKey := events.ListenerKey{Netns: staticNS.Inode, Addr: any4, Port: 2379}
	hostKey := events.ListenerKey{Netns: hostNS.Inode, Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(hostPort)}

	want := func(p *pod, withContainer bool) map[string]string {
		w := map[string]string{"pod_uid": p.uid, "namespace": p.namespace, "pod": p.name, "container": ""}
		if withContainer {
			w["container"] = p.container
			w["pid"] = fmt.Sprint(p.pid)
			w["comm"] = "podapp"
		}
		return w
	}
	check := func(reg *prometheus.Registry, k events.ListenerKey, w map[string]string) (bool, string) {
		got := infoOf(t, reg, k)
		for _, l := range got {
			ok := true
			for n, v := range w {
				ok = ok && l[n] == v
			}
			if ok {
				return true, ""
			}
		}
		return false, fmt.Sprintf("listener %s: listener_info %v, want one with %v", k, got, w)
	}
	// Doctor baseline before the overflow.
	doc := diagnose.New(tracer, procfs.FS{}, time.Minute, zerolog.Nop()).WithPods(pn)
	doc.Step()

	for _, c := range []struct {
		k events.ListenerKey
		p *pod
	}{{webKey, web}, {hostKey, host}, {staticKey, static}} {
		eventually(t, settle, func() (bool, string) { return check(reg, c.k, want(c.p, true)) })
		// No runtime: the pod UID from the cgroup, no names.
		eventually(t, settle, func() (bool, string) {
			return check(bare, c.k, map[string]string{"pod_uid": c.p.uid, "namespace": "", "pod": "", "container": "", "pid": fmt.Sprint(c.p.pid)})
		})
	}

	// The web pod overflows: counts exact against its namespace's counters.
	before, err := webNS.Netstat()
	if err != nil {
		t.Fatal(err)
	}
	burst(t, webNS, netip.MustParseAddrPort("127.0.0.1:8080"), 60)
	fs := doc.Step()
	ctd.stopContainer(t, web) // the listener closes: its counters are final
	after, err := webNS.Netstat()
	if err != nil {
		t.Fatal(err)
	}
	lo := after["TcpExt.ListenOverflows"] - before["TcpExt.ListenOverflows"]
	if lo == 0 {
		t.Fatal("kernel counted no overflow in the pod: the scenario is broken")
	}
	if l := listener(t, webKey); l.Overflows() != lo {
		t.Errorf("pod %s/%s: listenwatch overflows %d, kernel ListenOverflows %d", web.namespace, web.name, l.Overflows(), lo)
	} else {
		t.Logf("pod %s/%s: %d overflows, as the kernel counted", web.namespace, web.name, lo)
	}
	var sentence string
	for _, f := range findingsFor(fs, webKey) {
		if f.Cause == diagnose.CauseAcceptOverflow {
			sentence = f.Message
		}
	}
	wantWho := fmt.Sprintf("pod %s/%s container %s", web.namespace, web.name, web.container)
	if !strings.Contains(sentence, wantWho) {
		t.Errorf("diagnosis %q does not name %q (findings %+v)", sentence, wantWho, findingsFor(fs, webKey))
	} else {
		t.Logf("diagnosis: %s", sentence)
	}

	// Its process gone, the closed listener is still named after the pod
	// whose sandbox owns the namespace (no container: none runs).
	eventually(t, settle, func() (bool, string) { return check(reg, webKey, want(web, false)) })

	// The runtime's self-metric says where names come from.
	for _, m := range gaugeOf(t, reg, "listenwatch_pod_names_info") {
		if !labelsMatch(m, map[string]string{"source": "cri", "endpoint": "unix://" + ctd.sock}) {
			t.Errorf("pod_names_info %v, want source=cri endpoint=unix://%s", m.Label, ctd.sock)
		}
	}
	for _, m := range gaugeOf(t, bare, "listenwatch_pod_names_info") {
		if !labelsMatch(m, map[string]string{"source": "none"}) {
			t.Errorf("without a runtime: pod_names_info %v, want source=none", m.Label)
		}
	}
}

func contextTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}
