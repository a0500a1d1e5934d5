// Package procfs names files under a configurable /proc root. A DaemonSet
// mounts the host's /proc somewhere else (e.g. /host/proc), and tests point
// the root at fixtures under testdata/proc: every /proc read of the agent
// goes through an FS, and each parser is a pure function beside its reader.
package procfs

import (
	"path/filepath"
	"strconv"
)

// DefaultRoot is where Linux mounts procfs.
const DefaultRoot = "/proc"

// FS is a procfs root. The zero value is DefaultRoot.
type FS struct{ root string }

// New returns the procfs at root ("" means DefaultRoot).
func New(root string) FS { return FS{root: root} }

// Root is the directory the FS reads.
func (f FS) Root() string {
	if f.root == "" {
		return DefaultRoot
	}
	return f.root
}

// Path joins elem under the root: Path("net", "tcp6").
func (f FS) Path(elem ...string) string {
	return filepath.Join(append([]string{f.Root()}, elem...)...)
}

// PID is Path for a file of one process: PID(42, "cgroup").
func (f FS) PID(pid uint32, elem ...string) string {
	return f.Path(append([]string{strconv.FormatUint(uint64(pid), 10)}, elem...)...)
}
