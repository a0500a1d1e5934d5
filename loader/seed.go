package loader

import (
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
	"github.com/listenwatch/listenwatch/internal/procfs"
	"golang.org/x/sys/unix"
)

// procListener is a listening socket found in /proc.
type procListener struct {
	key   bpfLwListenerKey
	inode uint64
}

// seedListeners registers the listeners that existed before the agent
// started: the kernel reports listen() only as it happens. Every network
// namespace in use by a process is read once.
func seedListeners(m *ebpf.Map, proc procfs.FS) (int, error) {
	pids, err := filepath.Glob(proc.Path("[0-9]*"))
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
			ls, ns, err := readNamedNetns(p, seen, proc)
			if err != nil || ls == nil {
				continue
			}
			seen[ns] = true
			found = append(found, ls...)
		}
	}

	owners := socketOwners(found, proc)
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
			comm, _ := os.ReadFile(proc.PID(uint32(pid), "comm"))
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

// readNamedNetns reads the listeners of a namespace bind-mounted at path,
// unless its inode is in skip.
func readNamedNetns(path string, skip map[uint64]bool, proc procfs.FS) ([]procListener, uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || skip[st.Ino] {
		return nil, 0, err
	}
	var out []procListener
	err := netns.Enter(path, func() error {
		for _, f := range []string{proc.Path("thread-self", "net", "tcp"), proc.Path("thread-self", "net", "tcp6")} {
			if ls, err := readProcTCP(f, uint32(st.Ino)); err == nil {
				out = append(out, ls...)
			}
		}
		return nil
	})
	return out, st.Ino, err
}
