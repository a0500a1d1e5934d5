package loader

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/listenwatch/listenwatch/internal/procfs"
)

// socketOwners maps the socket inodes of the listeners to a process
// holding them, by one walk of every process's fd table.
func socketOwners(ls []procListener, proc procfs.FS) map[uint64]int {
	want := map[uint64]bool{}
	for _, l := range ls {
		want[l.inode] = true
	}
	owners := map[uint64]int{}
	fdDirs, _ := filepath.Glob(proc.Path("[0-9]*", "fd"))
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
