// Package netnstest creates named network namespaces with iproute2, for
// tests and benchmarks: a namespace with loopback up, veth links between
// two, and the namespace's own TCP counters (the kernel's ground truth).
package netnstest

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/listenwatch/listenwatch/internal/netns"
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
	ns, err := OpenPath("/var/run/netns/" + name)
	if err == nil {
		ns.Name = name
	}
	return ns, err
}

// OpenPath opens a namespace by path, such as a pod's /proc/<pid>/ns/net.
// Its Name is the path; Close it, do not Delete it.
func OpenPath(path string) (*NS, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &NS{Name: path, Inode: uint32(st.Ino), fd: fd}, nil
}

// Close releases the namespace without removing it.
func (n *NS) Close() error { return unix.Close(n.fd) }

// Do runs f on an OS thread inside the namespace. Sockets created in f
// stay in the namespace after it returns, whatever thread uses them.
func (n *NS) Do(f func() error) error { return netns.EnterFD(n.fd, n.Name, f) }

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

// Link joins a and b with a veth pair named veth+"a" (in a) and veth+"b"
// (in b), gives each its address, and routes a's default traffic to b: a
// server in a answers spoofed clients through b, which drops the answers,
// so nothing leaves the machine.
func Link(a, b *NS, veth string, addrA, addrB netip.Prefix) error {
	cmds := [][]string{
		{"link", "add", veth + "a", "netns", a.Name, "type", "veth", "peer", "name", veth + "b", "netns", b.Name},
		{"-n", a.Name, "addr", "add", addrA.String(), "dev", veth + "a"},
		{"-n", b.Name, "addr", "add", addrB.String(), "dev", veth + "b"},
		{"-n", a.Name, "link", "set", veth + "a", "up"},
		{"-n", b.Name, "link", "set", veth + "b", "up"},
		{"-n", a.Name, "route", "add", "default", "via", addrB.Addr().String()},
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}
