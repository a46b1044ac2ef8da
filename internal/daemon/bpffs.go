package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ensureBPFFS makes sure the pin directory lives on a bpf filesystem. Pins
// on any other filesystem fail, and pins on a tmpfs would not survive in
// the way the restart semantics promise. When the standard /sys/fs/bpf is
// not mounted (some minimal hosts), it is mounted, as systemd does on most
// distributions; any other location must be prepared by the operator.
func ensureBPFFS(path string, log *slog.Logger) error {
	dir := filepath.Clean(path)
	for {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("--bpffs-path %s: statfs %s: %w", path, dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if dir != "/sys/fs/bpf" {
		return fmt.Errorf("--bpffs-path %s: %s is not on a bpf filesystem (mount one with: mount -t bpf bpf %s)", path, dir, dir)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("--bpffs-path %s: mount bpffs on %s: %w", path, dir, err)
	}
	log.Info("mounted bpffs", "path", dir)
	return nil
}
