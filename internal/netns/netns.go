// Package netns enters network namespaces on a locked OS thread, for the
// few calls that must run inside one (socket creation, /proc/thread-self/net
// and /proc/sys/net reads), and creates named ones with iproute2 for tests
// and benchmarks.
package netns

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace with loopback up.
type NS struct {
	Name  string
	Inode uint32 // what listenwatch reports as netns
	fd    int
}

// Create makes a named namespace with loopback up; Delete removes it.
func Create(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	ns, err := Open(name)
	if err == nil {
		err = ns.Run("ip", "link", "set", "lo", "up")
	}
	if err != nil {
		exec.Command("ip", "netns", "del", name).Run()
		return nil, err
	}
	return ns, nil
}

// Delete closes the namespace and removes its name.
func (n *NS) Delete() error {
	unix.Close(n.fd)
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// Open opens an existing named namespace.
func Open(name string) (*NS, error) {
	path := "/var/run/netns/" + name
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &NS{Name: name, Inode: uint32(st.Ino), fd: fd}, nil
}

// Do runs f on an OS thread inside the namespace. Sockets created in f
// stay in the namespace after it returns, whatever thread uses them.
func (n *NS) Do(f func() error) error { return enterFD(n.fd, n.Name, f) }

// Run runs a command inside the namespace.
func (n *NS) Run(name string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s in %s: %v: %s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return nil
}

// Sysctl sets a per-namespace sysctl such as net.ipv4.tcp_syncookies.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(value), 0)
	})
}

// Netstat reads the namespace's TcpExt and Tcp counters: the kernel's own
// ground truth for drops and opens.
func (n *NS) Netstat() (map[string]uint64, error) {
	out := map[string]uint64{}
	err := n.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp"} {
			if err := readCounters(f, out); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// readCounters parses the header/value line pairs of /proc/net/netstat.
func readCounters(path string, out map[string]uint64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var header []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		if header == nil || header[0] != fields[0] {
			header = fields
			continue
		}
		prefix := strings.TrimSuffix(fields[0], ":")
		for i := 1; i < len(fields) && i < len(header); i++ {
			if v, err := strconv.ParseUint(fields[i], 10, 64); err == nil {
				out[prefix+"."+header[i]] = v
			}
		}
		header = nil
	}
	return sc.Err()
}

// Delta returns after[k]-before[k] for each key.
func Delta(before, after map[string]uint64, keys ...string) map[string]uint64 {
	d := map[string]uint64{}
	for _, k := range keys {
		d[k] = after[k] - before[k]
	}
	return d
}

// Enter runs f on a locked OS thread inside the namespace at path (a
// /proc/PID/ns/net or /run/netns/NAME file).
func Enter(path string, f func() error) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return enterFD(fd, path, f)
}

// enterFD runs f on a fresh goroutine locked to its thread inside the
// namespace fd. The thread is discarded if it cannot return to its own
// namespace, so no other goroutine ever runs in the wrong one.
func enterFD(fd int, name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err) // thread stays locked, then dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Find returns a path through which the namespace with this inode can be
// entered: a named namespace, or a process living in it.
func Find(inode uint64) (string, error) {
	var candidates []string
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		p, _ := filepath.Glob(filepath.Join(dir, "*"))
		candidates = append(candidates, p...)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	candidates = append(candidates, procs...)
	for _, p := range candidates {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Ino == inode {
			return p, nil
		}
	}
	return "", fmt.Errorf("network namespace %d: no process or bind mount found", inode)
}
