package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/listenwatch/listenwatch/events"
	"github.com/listenwatch/listenwatch/internal/netnstest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// cluster is a single-node Kubernetes started by the test: etcd, the
// control plane and a kubelet on the test's containerd. Every process is
// stopped by its pid, and what the kubelet changes on the host is undone.
type cluster struct {
	t       *testing.T
	dir     string
	bin     string
	ctd     *containerd
	procs   []*exec.Cmd
	kubecfg string
	sysctls map[string]string
}

// The host sysctls the kubelet sets with no switch to stop it.
var kubeletSysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}

// freePort is a port free on every address, below the kernel's ephemeral
// range: a port the kernel picked (127.0.0.1:0) was free only until the
// cluster's own connections took it as a local port, and the kubelet, which
// binds 0.0.0.0 a minute later, once failed with "address already in use".
func freePort(t *testing.T) int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 2048 {
				low = v
			}
		}
	}
	base := max(1024, low-16384)
	for range 200 {
		p := base + mrand.IntN(low-base)
		if usedPorts[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		usedPorts[p] = true
		return p
	}
	t.Fatalf("no free port in [%d, %d)", base, low)
	return 0
}

// usedPorts are the ports freePort gave out: each once.
var usedPorts = map[int]bool{}

// startProc starts a cluster process logging to dir/name.log; it is
// stopped (TERM, then KILL) in reverse order by stop.
func (c *cluster) startProc(name string, args ...string) {
	c.t.Helper()
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	bin := name
	if _, err := os.Stat(filepath.Join(c.bin, name)); err == nil {
		bin = filepath.Join(c.bin, name)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	c.procs = append(c.procs, cmd)
}

func (c *cluster) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, name+".log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func (c *cluster) kubectl(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.kubecfg}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	for k, v := range c.sysctls {
		os.WriteFile("/proc/sys/"+k, []byte(v), 0)
	}
}

// pki writes a CA and the certificates the cluster needs.
type pki struct {
	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate
	dir    string
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newPKI(t *testing.T, dir string) *pki {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "listenwatch-e2e-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", der)
	return &pki{caKey: key, caCert: cert, dir: dir}
}

// issue writes name.crt and name.key: a serving certificate when ips is
// set, else a client certificate for cn in org.
func (p *pki) issue(t *testing.T, name, cn, org string, ips ...string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	if org != "" {
		tmpl.Subject.Organization = []string{org}
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	if len(ips) > 0 {
		tmpl.DNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(p.dir, name+".crt"), "CERTIFICATE", der)
	kd, _ := x509.MarshalECPrivateKey(key)
	writePEM(t, filepath.Join(p.dir, name+".key"), "EC PRIVATE KEY", kd)
}

// TestKubernetesE2E is `make e2e`: a real single-node Kubernetes, the
// image from `make image`, `kubectl apply -k deploy/` exactly as the
// README says, and a pod whose listener overflows: the agent's metrics
// must name that pod and count its drops exactly.
func TestKubernetesE2E(t *testing.T) {
	bin := os.Getenv("LISTENWATCH_E2E_K8S_BIN")
	if bin == "" {
		t.Skip("the Kubernetes end-to-end test runs with make e2e (it builds or reuses the Kubernetes binaries)")
	}
	need(t, events.StageSYN)
	image := os.Getenv("LISTENWATCH_E2E_IMAGE")
	if image == "" {
		t.Fatal("LISTENWATCH_E2E_IMAGE: the OCI archive of make image")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd not installed (scripts/install-deps.sh e2e)")
	}
	start := time.Now()
	ctd := startContainerdAt(t, "/run/containerd/containerd.sock")
	if out, err := exec.Command("ctr", "-a", ctd.sock, "-n", "k8s.io", "images", "import", image).CombinedOutput(); err != nil {
		t.Fatalf("import %s: %v: %s", image, err, out)
	}
	dir, err := os.MkdirTemp("", "lwk8s")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, bin: bin, ctd: ctd, sysctls: map[string]string{}}
	for _, k := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			c.sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	// Files the kubelet writes outside its root dir: what is new is ours.
	outside := []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods"}
	existed := map[string]bool{}
	for _, p := range outside {
		if _, err := os.Stat(p); err == nil {
			existed[p] = true
		}
	}
	t.Cleanup(func() {
		c.stop()
		for _, p := range outside {
			if !existed[p] {
				os.RemoveAll(p)
			}
		}
		unmountUnder(dir)
		os.RemoveAll(dir)
	})

	p := newPKI(t, dir)
	p.issue(t, "apiserver", "kube-apiserver", "", "127.0.0.1", "10.96.0.1")
	p.issue(t, "admin", "admin", "system:masters")
	sa, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sad, _ := x509.MarshalECPrivateKey(sa)
	writePEM(t, filepath.Join(dir, "sa.key"), "EC PRIVATE KEY", sad)
	sapub, _ := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	writePEM(t, filepath.Join(dir, "sa.pub"), "PUBLIC KEY", sapub)
	f := func(n string) string { return filepath.Join(dir, n) }

	etcdPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	c.startProc("etcd", "--data-dir", f("etcd"), "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peerPort))
	c.startProc("kube-apiserver", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--endpoint-reconciler-type=none", "--service-cluster-ip-range=10.96.0.0/24",
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--client-ca-file="+f("ca.crt"), "--tls-cert-file="+f("apiserver.crt"), "--tls-private-key-file="+f("apiserver.key"),
		"--service-account-key-file="+f("sa.pub"), "--service-account-signing-key-file="+f("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--authorization-mode=RBAC",
		"--kubelet-client-certificate="+f("admin.crt"), "--kubelet-client-key="+f("admin.key"),
		"--kubelet-preferred-address-types=InternalIP")
	c.kubecfg = f("admin.kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:%d", certificate-authority: %q}}]
users: [{name: admin, user: {client-certificate: %q, client-key: %q}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, apiPort, f("ca.crt"), f("admin.crt"), f("admin.key"))
	if err := os.WriteFile(c.kubecfg, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*settle, func() (bool, string) {
		out, err := c.kubectl("get", "--raw", "/readyz")
		return err == nil && strings.TrimSpace(out) == "ok", fmt.Sprintf("apiserver not ready: %v %s\n%s", err, out, c.logTail("kube-apiserver"))
	})
	t.Logf("apiserver ready after %v", time.Since(start).Round(100*time.Millisecond))
	c.startProc("kube-controller-manager", "--kubeconfig="+c.kubecfg, "--authentication-kubeconfig="+c.kubecfg,
		"--authorization-kubeconfig="+c.kubecfg, "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", freePort(t)),
		"--leader-elect=false", "--service-account-private-key-file="+f("sa.key"), "--root-ca-file="+f("ca.crt"),
		"--use-service-account-credentials=false", "--controllers=*")
	c.startProc("kube-scheduler", "--kubeconfig="+c.kubecfg, "--authentication-kubeconfig="+c.kubecfg,
		"--authorization-kubeconfig="+c.kubecfg, "--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", freePort(t)),
		"--leader-elect=false")
	kubeletCfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
podLogsDir: %q
makeIPTablesUtilChains: false
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
port: %d
healthzPort: %d
readOnlyPort: 0
authentication: {anonymous: {enabled: false}, x509: {clientCAFile: %q}}
authorization: {mode: AlwaysAllow}
`, f("pod-logs"), freePort(t), freePort(t), f("ca.crt"))
	if err := os.WriteFile(f("kubelet.yaml"), []byte(kubeletCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	node := "lw-e2e-node"
	c.startProc("kubelet", "--config="+f("kubelet.yaml"), "--kubeconfig="+c.kubecfg,
		"--container-runtime-endpoint=unix://"+ctd.sock, "--hostname-override="+node,
		"--root-dir="+f("kubelet"), "--cert-dir="+f("kubelet-pki"))
	eventually(t, 4*settle, func() (bool, string) {
		out, _ := c.kubectl("get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
		return strings.TrimSpace(out) == "True", fmt.Sprintf("node not Ready (%s)\n%s", out, c.logTail("kubelet"))
	})
	t.Logf("node Ready after %v", time.Since(start).Round(100*time.Millisecond))

	// As the README says.
	if out, err := c.kubectl("apply", "-k", "../deploy/"); err != nil {
		t.Fatalf("kubectl apply -k deploy/: %v\n%s", err, out)
	}
	eventually(t, 4*settle, func() (bool, string) {
		out, _ := c.kubectl("-n", "listenwatch", "get", "pods", "-l", "app.kubernetes.io/name=listenwatch",
			"-o", "jsonpath={.items[*].status.phase} {.items[*].status.containerStatuses[*].ready}")
		return strings.TrimSpace(out) == "Running true", fmt.Sprintf("DaemonSet pod not running and ready: %q\n%s", out, c.describe())
	})
	t.Logf("DaemonSet pod Running and ready after %v", time.Since(start).Round(100*time.Millisecond))

	// A pod whose listener overflows: backlog 4, never accepts.
	podYAML := `apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers:
    - name: app
      image: ` + pauseImage + `
      imagePullPolicy: Never
      command: ["/podapp", "0.0.0.0:8080", "4"]
`
	if err := os.WriteFile(f("web.yaml"), []byte(podYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.kubectl("apply", "-f", f("web.yaml")); err != nil {
		t.Fatalf("apply web: %v\n%s", err, out)
	}
	eventually(t, 4*settle, func() (bool, string) {
		out, _ := c.kubectl("-n", "shop", "get", "pod", "web", "-o", "jsonpath={.status.phase}")
		return strings.TrimSpace(out) == "Running", fmt.Sprintf("web pod %q\n%s", out, c.describe())
	})
	uid, _ := c.kubectl("-n", "shop", "get", "pod", "web", "-o", "jsonpath={.metadata.uid}")
	pid := c.containerPID(t, "web", "app")
	webNS, err := netnstest.OpenPath(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer webNS.Close()

	metrics := "http://127.0.0.1:9810/metrics"
	info := fmt.Sprintf(`container="app",namespace="shop",netns="%d",pid="%d",pod="web",pod_uid="%s",port="8080"`, webNS.Inode, pid, strings.TrimSpace(uid))
	eventually(t, 2*settle, func() (bool, string) {
		body, err := get(metrics)
		return err == nil && strings.Contains(body, info), fmt.Sprintf("agent metrics lack listener_info {%s}: %v\n%s", info, err, grepLines(body, "listenwatch_listener_info"))
	})
	lo := overflowScraped(t, webNS, netip.MustParseAddrPort("127.0.0.1:8080"), netip.MustParseAddrPort("0.0.0.0:8080"), metrics)
	t.Logf("e2e: DaemonSet from deploy/ on a real cluster; pod shop/web (container app) named by the agent, %d overflows as the kernel counted; %v in all",
		lo, time.Since(start).Round(time.Second))
}

// describe is what kubectl says about the pods, for failure messages.
func (c *cluster) describe() string {
	out, _ := c.kubectl("get", "pods", "-A", "-o", "wide")
	ev, _ := c.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp")
	if len(ev) > 2000 {
		ev = ev[len(ev)-2000:]
	}
	return out + "\n" + ev
}

// containerPID finds a pod's container through the CRI.
func (c *cluster) containerPID(t *testing.T, podName, container string) int {
	t.Helper()
	ctx, cancel := contextTimeout()
	defer cancel()
	l, err := c.ctd.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.name": podName, "io.kubernetes.container.name": container}}})
	if err != nil || len(l.Containers) == 0 {
		t.Fatalf("container %s/%s not found: %v", podName, container, err)
	}
	st, err := c.ctd.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: l.Containers[0].Id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscanf(st.Info["info"][strings.Index(st.Info["info"], `"pid":`)+6:], "%d", &pid)
	if pid == 0 {
		t.Fatalf("no pid for %s/%s", podName, container)
	}
	return pid
}
