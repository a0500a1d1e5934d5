package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
