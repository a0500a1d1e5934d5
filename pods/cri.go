package pods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/listenwatch/listenwatch/internal/procfs"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Pod names what runs a listener. Empty fields are unknown.
type Pod struct {
	UID, Namespace, Name, Container string
}

// The labels the kubelet puts on every sandbox and container it creates.
const (
	labelNamespace = "io.kubernetes.pod.namespace"
	labelName      = "io.kubernetes.pod.name"
	labelUID       = "io.kubernetes.pod.uid"
	labelContainer = "io.kubernetes.container.name"
)

// DefaultEndpoints are the CRI sockets tried, in order, when none is
// configured: containerd, CRI-O, k3s, k0s, microk8s, cri-dockerd.
var DefaultEndpoints = []string{
	"unix:///run/containerd/containerd.sock",
	"unix:///run/crio/crio.sock",
	"unix:///var/run/crio/crio.sock",
	"unix:///run/k3s/containerd/containerd.sock",
	"unix:///run/k0s/containerd.sock",
	"unix:///var/snap/microk8s/common/run/containerd.sock",
	"unix:///run/cri-dockerd.sock",
}

const (
	callTimeout = 5 * time.Second
	// Labels of a container never change: an entry lives until its
	// container has been gone from the runtime's list for this long, so a
	// listener whose owner just exited is still named at the next scrapes.
	grace = 2 * time.Minute
	// A miss (a container started since the last list) asks for an early
	// refresh, but never more often than this.
	minRefresh = time.Second
)

// Resolver maps container IDs and pod network namespaces to names, from
// the runtime's lists refreshed in the background. Lookups never block on
// the runtime: a scrape or the event path only reads the cache.
type Resolver struct {
	Endpoint string // the socket that answered
	Runtime  string // e.g. "containerd 1.6.20"

	client   runtimeapi.RuntimeServiceClient
	conn     *grpc.ClientConn
	proc     procfs.FS
	log      zerolog.Logger
	interval time.Duration

	mu         sync.RWMutex
	containers map[string]entry // by container ID
	netns      map[uint64]entry // pod-network sandboxes by netns inode
	sandboxes  map[string]sandbox
	errors     uint64 // failed refreshes
	refreshes  uint64

	wake chan struct{}
}

type entry struct {
	pod  Pod
	seen time.Time
}

// sandbox caches what PodSandboxStatus said of a sandbox (asked once).
type sandbox struct {
	netns uint64 // 0: node network or unknown
	seen  time.Time
}

// ErrNoRuntime is returned by Discover when no endpoint answers.
var ErrNoRuntime = errors.New("no CRI runtime answered")

// Discover connects to endpoint, or when it is "" to the first of
// DefaultEndpoints whose socket exists and answers Version().
func Discover(ctx context.Context, endpoint string, proc procfs.FS, interval time.Duration, log zerolog.Logger) (*Resolver, error) {
	if endpoint != "" {
		return dial(ctx, endpoint, proc, interval, log)
	}
	var tried []string
	for _, ep := range DefaultEndpoints {
		if _, err := os.Stat(strings.TrimPrefix(ep, "unix://")); err != nil {
			continue
		}
		r, err := dial(ctx, ep, proc, interval, log)
		if err == nil {
			return r, nil
		}
		tried = append(tried, err.Error())
	}
	if len(tried) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoRuntime, strings.Join(tried, "; "))
	}
	return nil, fmt.Errorf("%w: none of %s exists", ErrNoRuntime, strings.Join(DefaultEndpoints, ", "))
}

func dial(ctx context.Context, endpoint string, proc procfs.FS, interval time.Duration, log zerolog.Logger) (*Resolver, error) {
	if !strings.HasPrefix(endpoint, "unix://") {
		if !strings.HasPrefix(endpoint, "/") {
			return nil, fmt.Errorf("CRI endpoint %q: want unix:///path or /path", endpoint)
		}
		endpoint = "unix://" + endpoint
	}
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI endpoint %s: %w", endpoint, err)
	}
	client := runtimeapi.NewRuntimeServiceClient(conn)
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	v, err := client.Version(cctx, &runtimeapi.VersionRequest{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("CRI endpoint %s: Version: %w", endpoint, err)
	}
	return &Resolver{
		Endpoint: endpoint, Runtime: v.RuntimeName + " " + v.RuntimeVersion,
		client: client, conn: conn, proc: proc, log: log, interval: interval,
		containers: map[string]entry{}, netns: map[uint64]entry{}, sandboxes: map[string]sandbox{},
		wake: make(chan struct{}, 1),
	}, nil
}

// Run refreshes the cache every interval (and soon after a miss) until ctx
// ends, then closes the connection.
func (r *Resolver) Run(ctx context.Context) {
	defer r.conn.Close()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	var last time.Time
	for {
		if err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Str("endpoint", r.Endpoint).Msg("CRI: could not list pods; names may be stale")
		}
		last = time.Now()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
			if d := minRefresh - time.Since(last); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
	}
}

// Refresh lists containers and sandboxes once and updates the cache.
func (r *Resolver) Refresh(ctx context.Context) error {
	err := r.refresh(ctx)
	r.mu.Lock()
	r.refreshes++
	if err != nil {
		r.errors++
	}
	r.mu.Unlock()
	return err
}

func (r *Resolver) refresh(ctx context.Context) error {
	now := time.Now()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	cs, err := r.client.ListContainers(cctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return fmt.Errorf("ListContainers: %w", err)
	}
	ss, err := r.client.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("ListPodSandbox: %w", err)
	}
	// Sandbox network namespaces: asked once per sandbox, outside the lock.
	r.mu.RLock()
	var ask []*runtimeapi.PodSandbox
	for _, s := range ss.Items {
		if _, ok := r.sandboxes[s.Id]; !ok && s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			ask = append(ask, s)
		}
	}
	r.mu.RUnlock()
	found := make(map[string]uint64, len(ask))
	for _, s := range ask {
		ino, err := r.sandboxNetns(cctx, s.Id)
		if err != nil {
			r.log.Debug().Err(err).Str("sandbox", s.Id).Msg("CRI: sandbox network namespace unknown")
		}
		found[s.Id] = ino
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs.Containers {
		p := podFromLabels(c.Labels)
		if p.Container == "" && c.Metadata != nil {
			p.Container = c.Metadata.Name
		}
		r.containers[c.Id] = entry{pod: p, seen: now}
	}
	for _, s := range ss.Items {
		sb, ok := r.sandboxes[s.Id]
		if ino, asked := found[s.Id]; asked {
			sb, ok = sandbox{netns: ino}, true
		}
		if !ok {
			continue
		}
		sb.seen = now
		r.sandboxes[s.Id] = sb
		if sb.netns == 0 || s.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			continue
		}
		p := podFromLabels(s.Labels)
		if s.Metadata != nil {
			p.UID, p.Namespace, p.Name = s.Metadata.Uid, s.Metadata.Namespace, s.Metadata.Name
		}
		p.Container = "" // the sandbox is the pod, not one of its containers
		r.netns[sb.netns] = entry{pod: p, seen: now}
	}
	for id, e := range r.containers {
		if now.Sub(e.seen) > grace {
			delete(r.containers, id)
		}
	}
	for id, s := range r.sandboxes {
		if now.Sub(s.seen) > grace {
			delete(r.sandboxes, id)
		}
	}
	for ino, e := range r.netns {
		if now.Sub(e.seen) > grace {
			delete(r.netns, ino)
		}
	}
	return nil
}

// sandboxNetns returns the inode of a pod-network sandbox's network
// namespace, or 0 for a hostNetwork sandbox (it shares the node's, which
// must not be named after one pod).
func (r *Resolver) sandboxNetns(ctx context.Context, id string) (uint64, error) {
	st, err := r.client.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("PodSandboxStatus: %w", err)
	}
	if l := st.GetStatus().GetLinux(); l == nil || l.GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_POD {
		return 0, nil
	}
	pid, path := sandboxInfo(st.Info["info"])
	if pid > 0 {
		if ino, err := inode(r.proc.PID(uint32(pid), "ns", "net")); err == nil {
			return ino, nil
		}
	}
	if path != "" {
		return inode(path)
	}
	return 0, errors.New("verbose status names neither a pid nor a netns path")
}

// sandboxInfo reads the sandbox's pid and network namespace path from the
// runtime's verbose info (containerd and CRI-O both give "pid" and the OCI
// runtime spec).
func sandboxInfo(info string) (pid int, netnsPath string) {
	var v struct {
		Pid         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if json.Unmarshal([]byte(info), &v) != nil {
		return 0, ""
	}
	for _, n := range v.RuntimeSpec.Linux.Namespaces {
		if n.Type == "network" {
			netnsPath = n.Path
		}
	}
	return v.Pid, netnsPath
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func podFromLabels(l map[string]string) Pod {
	return Pod{UID: l[labelUID], Namespace: l[labelNamespace], Name: l[labelName], Container: l[labelContainer]}
}

// Container returns the names of a container, from the cache. A miss asks
// the background loop for an early refresh and returns at once.
func (r *Resolver) Container(id string) (Pod, bool) {
	if r == nil || id == "" {
		return Pod{}, false
	}
	r.mu.RLock()
	e, ok := r.containers[id]
	r.mu.RUnlock()
	if !ok {
		r.poke()
	}
	return e.pod, ok
}

// Netns returns the pod whose sandbox owns a network namespace (pod
// network only), from the cache.
func (r *Resolver) Netns(ino uint64) (Pod, bool) {
	if r == nil || ino == 0 {
		return Pod{}, false
	}
	r.mu.RLock()
	e, ok := r.netns[ino]
	r.mu.RUnlock()
	return e.pod, ok
}

// Stats reports how many refreshes ran and failed, and the cache's size.
func (r *Resolver) Stats() (refreshes, errors uint64, containers, sandboxes int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.refreshes, r.errors, len(r.containers), len(r.netns)
}

func (r *Resolver) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}
