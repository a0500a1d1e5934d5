package loader

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/listenwatch/listenwatch/internal/netns"
	"github.com/listenwatch/listenwatch/internal/procfs"
	"golang.org/x/sys/unix"
)

// procListener is a listening socket that predates the agent.
type procListener struct {
	key     bpfLwListenerKey
	inode   uint64
	backlog uint32 // 0 when read from /proc text, which does not show it
	sk      uint64 // the socket; 0 when read from /proc text
	drops   uint32 // its sk_drops when read: the baseline of its slot
}

// netnsPath is one network namespace and a path to enter it by.
type netnsPath struct {
	inode uint64
	path  string // /proc/PID/ns/net or a /run/netns bind mount
	pid   bool   // path is a process's: its /proc/PID/net files show the namespace
}

// namespaces lists every network namespace in use, once each: those of
// processes, then those kept alive by a bind mount alone (ip netns add).
func namespaces(proc procfs.FS) ([]netnsPath, error) {
	pids, err := filepath.Glob(proc.Path("[0-9]*"))
	if err != nil {
		return nil, err
	}
	seen := map[uint64]bool{}
	var out []netnsPath
	for _, dir := range pids {
		p := filepath.Join(dir, "ns", "net")
		ino, err := nsInode(p)
		if err != nil || seen[ino] {
			continue
		}
		seen[ino] = true
		out = append(out, netnsPath{inode: ino, path: p, pid: true})
	}
	if len(out) == 0 {
		return nil, errors.New("no readable /proc/<pid>/ns/net")
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		paths, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, p := range paths {
			var st unix.Stat_t
			if unix.Stat(p, &st) != nil || seen[st.Ino] {
				continue
			}
			seen[st.Ino] = true
			out = append(out, netnsPath{inode: st.Ino, path: p})
		}
	}
	return out, nil
}

// seedListeners registers the listeners that existed before the agent
// started: the kernel reports listen() only as it happens. It reads them
// with the socket iterator (the same fields as a new listener: backlog
// included), or from /proc text where the kernel has no iter/tcp. It
// returns how many it registered and which way it read them.
func (t *Tracer) seedListeners() (int, string, error) {
	nss, err := namespaces(t.cfg.Proc)
	if err != nil {
		return 0, "", err
	}
	how := "socket iterator"
	found, err := t.iterateListeners(nss)
	if err != nil {
		t.log.Debug().Err(err).Msg("socket iterator unavailable: existing listeners read from /proc")
		how = "/proc (no socket iterator: " + err.Error() + ")"
		found = procListeners(nss, t.cfg.Proc)
	}
	n, err := register(t.maps[bpfMapLwListeners], found, t.cfg.Proc)
	return n, how, err
}

// iterateListeners opens the iter/tcp program inside each namespace.
func (t *Tracer) iterateListeners(nss []netnsPath) ([]procListener, error) {
	prog, err := t.load(t.spec.Copy(), bpfProgLwIterTcp)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", bpfProgLwIterTcp, err)
	}
	defer prog.Close()
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", bpfProgLwIterTcp, err)
	}
	defer it.Close()
	var out []procListener
	for _, ns := range nss {
		var raw []byte
		// The iterator walks the namespace of whoever opens it.
		err := netns.Enter(ns.path, func() error {
			rd, err := it.Open()
			if err != nil {
				return err
			}
			defer rd.Close()
			raw, err = io.ReadAll(rd)
			return err
		})
		if err != nil {
			continue // the process exited meanwhile
		}
		ls, err := decodeSeeds(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}

// seedSize is the size of one iterator record.
const seedSize = int(unsafe.Sizeof(bpfLwSeed{}))

// decodeSeeds splits the iterator's output into its records.
func decodeSeeds(raw []byte) ([]procListener, error) {
	if len(raw)%seedSize != 0 {
		return nil, fmt.Errorf("socket iterator: %d bytes is not a whole number of %d-byte records", len(raw), seedSize)
	}
	out := make([]procListener, 0, len(raw)/seedSize)
	for off := 0; off < len(raw); off += seedSize {
		r := (*bpfLwSeed)(unsafe.Pointer(&raw[off]))
		out = append(out, procListener{key: r.Key, inode: r.Ino, backlog: r.Backlog, sk: r.Sk, drops: r.Drops})
	}
	return out, nil
}

// procListeners reads /proc/net/tcp{,6} of each namespace: through a
// process of it, or from inside it for a bind-mounted one.
func procListeners(nss []netnsPath, proc procfs.FS) []procListener {
	var found []procListener
	for _, ns := range nss {
		if ns.pid {
			for _, f := range []string{"tcp", "tcp6"} {
				ls, err := readProcTCP(filepath.Join(filepath.Dir(filepath.Dir(ns.path)), "net", f), uint32(ns.inode))
				if err == nil {
					found = append(found, ls...)
				}
			}
			continue
		}
		netns.Enter(ns.path, func() error {
			for _, f := range []string{proc.Path("thread-self", "net", "tcp"), proc.Path("thread-self", "net", "tcp6")} {
				if ls, err := readProcTCP(f, uint32(ns.inode)); err == nil {
					found = append(found, ls...)
				}
			}
			return nil
		})
	}
	return found
}

// addOwner is add_owner of the BPF code, for a seeded listener.
func addOwner(v *bpfLwListenerStats, pid uint32) {
	for i, o := range v.Owners {
		if o == pid {
			return
		}
		if o == 0 {
			v.Owners[i] = pid
			return
		}
	}
}

// register adds the listeners found to the registry, with their owners.
// A listener the kernel registered since attach is already right: kept.
func register(m *ebpf.Map, found []procListener, proc procfs.FS) (int, error) {
	owners := socketOwners(found, proc)
	vals := map[bpfLwListenerKey]*bpfLwListenerStats{}
	for _, l := range found {
		v := vals[l.key]
		if v == nil {
			v = &bpfLwListenerStats{}
			vals[l.key] = v
		}
		if l.sk != 0 && int(v.Sockets) < len(v.Socks) {
			v.Socks[v.Sockets] = l.sk
			v.SockDrops[v.Sockets] = l.drops
		}
		v.Sockets++
		v.Backlog = max(v.Backlog, l.backlog)
		if pid, ok := owners[l.inode]; ok {
			addOwner(v, uint32(pid))
		}
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
