package loader

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/listenwatch/listenwatch/internal/netns"
	"golang.org/x/sys/unix"
)

const tracefsPath = "/sys/kernel/tracing"

// ensureTracefs mounts tracefs when neither it nor debugfs's tracing
// directory is mounted (common on minimal and container hosts): classic
// tracepoints attach through its event ids. It returns the path it mounted,
// or "" when tracefs was already there.
func ensureTracefs() (string, error) {
	for _, p := range []string{tracefsPath, "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(filepath.Join(p, "events")); err == nil {
			return "", nil
		}
	}
	if err := unix.Mount("tracefs", tracefsPath, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("mount tracefs on %s: %w", tracefsPath, err)
	}
	return tracefsPath, nil
}

func unmountTracefs(p string) error {
	// Another tool may have started using it meanwhile: leave it then.
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	return nil
}

// symbolRange returns the address of a kernel text symbol and of the next
// text symbol after it: the bounds of the function's code.
func symbolRange(path, name string) (lo, hi uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var addrs []uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "ffffffff81a0b2c0 T tcp_rcv_state_process"
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 3 || (fields[1] != "t" && fields[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			continue
		}
		if fields[2] == name && len(fields) == 3 {
			lo = a
		}
		addrs = append(addrs, a)
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", path, err)
	}
	if lo == 0 {
		return 0, 0, fmt.Errorf("%s: no address for %s (kernel.kptr_restrict hides addresses from this user?)", path, name)
	}
	for _, a := range addrs {
		if a > lo && (hi == 0 || a < hi) {
			hi = a
		}
	}
	if hi == 0 {
		return 0, 0, fmt.Errorf("%s: no symbol after %s", path, name)
	}
	return lo, hi, nil
}

// procListener is a listening socket found in /proc.
type procListener struct {
	key   bpfLwListenerKey
	inode uint64
}

// seedListeners registers the listeners that existed before the agent
// started: the kernel reports listen() only as it happens. Every network
// namespace in use by a process is read once.
func seedListeners(m *ebpf.Map) (int, error) {
	pids, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, err
	}
	seen := map[uint64]bool{}
	var found []procListener
	for _, dir := range pids {
		ns, err := nsInode(filepath.Join(dir, "ns/net"))
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		for _, f := range []string{"net/tcp", "net/tcp6"} {
			ls, err := readProcTCP(filepath.Join(dir, f), uint32(ns))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				continue // the process exited meanwhile
			}
			found = append(found, ls...)
		}
	}
	if len(seen) == 0 {
		return 0, errors.New("no readable /proc/<pid>/ns/net")
	}
	// Namespaces kept alive by a bind mount alone (ip netns add) have no
	// process to read them through: enter each on a locked thread.
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		paths, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, p := range paths {
			ls, ns, err := readNamedNetns(p, seen)
			if err != nil || ls == nil {
				continue
			}
			seen[ns] = true
			found = append(found, ls...)
		}
	}

	owners := socketOwners(found)
	vals := map[bpfLwListenerKey]*bpfLwListenerStats{}
	for _, l := range found {
		v := vals[l.key]
		if v == nil {
			v = &bpfLwListenerStats{}
			vals[l.key] = v
		}
		v.Sockets++
		if pid, ok := owners[l.inode]; ok && v.Pid == 0 {
			v.Pid = uint32(pid)
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			for i, c := range []byte(strings.TrimSpace(string(comm))) {
				if i == len(v.Comm)-1 {
					break
				}
				v.Comm[i] = int8(c)
			}
		}
	}
	n := 0
	for k, v := range vals {
		// A listener the kernel registered since attach is already right.
		if err := m.Update(k, v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return n, fmt.Errorf("register listener: %w", err)
		}
		n++
	}
	return n, nil
}

func nsInode(path string) (uint64, error) {
	// "net:[4026531840]"
	s, err := os.Readlink(path)
	if err != nil {
		return 0, err
	}
	i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']')
	if i < 0 || j < i {
		return 0, fmt.Errorf("%s: unexpected link %q", path, s)
	}
	return strconv.ParseUint(s[i+1:j], 10, 64)
}

// readProcTCP returns the LISTEN sockets of a /proc/net/tcp{,6} file.
func readProcTCP(path string, netns uint32) ([]procListener, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseProcTCP(string(b), netns)
}

func parseProcTCP(text string, netns uint32) ([]procListener, error) {
	var out []procListener
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 10 || f[3] != "0A" { // TCP_LISTEN
			continue
		}
		ap, err := parseProcAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		ino, _ := strconv.ParseUint(f[9], 10, 64)
		k := bpfLwListenerKey{Netns: netns, Port: ap.Port()}
		if ap.Addr().Is4() {
			k.Family = 2
			a := ap.Addr().As4()
			copy(k.Addr[:], a[:])
		} else {
			k.Family = 10
			k.Addr = ap.Addr().As16()
		}
		out = append(out, procListener{key: k, inode: ino})
	}
	return out, nil
}

// parseProcAddr decodes "0100007F:1F90": the address as the kernel's
// 32-bit words printed in host (little-endian) order, then the port.
func parseProcAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	for w := 0; w < len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port in %q", s)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// socketOwners maps the socket inodes of the listeners to a process
// holding them, by one walk of every process's fd table.
func socketOwners(ls []procListener) map[uint64]int {
	want := map[uint64]bool{}
	for _, l := range ls {
		want[l.inode] = true
	}
	owners := map[uint64]int{}
	fdDirs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, dir := range fdDirs {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			s, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || !strings.HasPrefix(s, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(s[8:len(s)-1], 10, 64)
			if err == nil && want[ino] {
				if _, ok := owners[ino]; !ok {
					owners[ino] = pid
				}
			}
		}
	}
	return owners
}

// readNamedNetns reads the listeners of a namespace bind-mounted at path,
// unless its inode is in skip.
func readNamedNetns(path string, skip map[uint64]bool) ([]procListener, uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || skip[st.Ino] {
		return nil, 0, err
	}
	var out []procListener
	err := netns.Enter(path, func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			if ls, err := readProcTCP(f, uint32(st.Ino)); err == nil {
				out = append(out, ls...)
			}
		}
		return nil
	})
	return out, st.Ino, err
}
