// Package netns enters network namespaces on a locked OS thread, for the
// few calls that must run inside one (socket creation, /proc/thread-self/net
// and /proc/sys/net reads), and finds a namespace by its inode. Creating
// namespaces is for tests and benchmarks: package netnstest.
package netns

import (
	"fmt"
	"path/filepath"
	"runtime"

	"github.com/listenwatch/listenwatch/internal/procfs"
	"golang.org/x/sys/unix"
)

// Enter runs f on a locked OS thread inside the namespace at path (a
// /proc/PID/ns/net or /run/netns/NAME file).
func Enter(path string, f func() error) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return EnterFD(fd, path, f)
}

// EnterFD runs f on a fresh goroutine locked to its thread inside the
// namespace fd. The thread is discarded if it cannot return to its own
// namespace, so no other goroutine ever runs in the wrong one.
func EnterFD(fd int, name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0) // this process's own thread: always the real /proc
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
func Find(proc procfs.FS, inode uint64) (string, error) {
	var candidates []string
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		p, _ := filepath.Glob(filepath.Join(dir, "*"))
		candidates = append(candidates, p...)
	}
	procs, _ := filepath.Glob(proc.Path("[0-9]*", "ns", "net"))
	candidates = append(candidates, procs...)
	for _, p := range candidates {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Ino == inode {
			return p, nil
		}
	}
	return "", fmt.Errorf("network namespace %d: no process or bind mount found", inode)
}
