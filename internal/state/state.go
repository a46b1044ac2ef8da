// Package state persists xlbd's desired state (the set of services) so that
// a restarted daemon programs the same services before it accepts requests.
//
// The file is written atomically: a temporary file in the same directory is
// written and fsynced, renamed over the old file, and the directory is
// fsynced, so a crash at any point leaves either the old or the new file.
package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/xlb-dev/xlb/api"
)

// FileName is the state file inside the state directory.
const FileName = "services.json"

// FormatVersion is the version of the file layout this build writes and reads.
const FormatVersion = 1

// Snapshot is what is persisted.
type Snapshot struct {
	// Generation is the desired-state generation at the time of the write,
	// so that it keeps increasing across restarts.
	Generation uint64
	Services   []api.Service
}

// file is the on-disk layout.
type file struct {
	FormatVersion int           `json:"formatVersion"`
	Generation    uint64        `json:"generation"`
	SavedAt       time.Time     `json:"savedAt"`
	Services      []api.Service `json:"services"`
}

// Store reads and writes the state file of one directory.
type Store struct {
	dir string
	log *slog.Logger
	now func() time.Time
}

// Open creates dir (0700) if needed and returns a Store for it.
func Open(dir string, log *slog.Logger) (*Store, error) {
	if dir == "" {
		return nil, errors.New("state: empty state directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: create %s: %w", dir, err)
	}
	return &Store{dir: dir, log: log, now: time.Now}, nil
}

// Path is the full path of the state file.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Load reads the state file. A missing file is an empty snapshot. A file
// that cannot be parsed is logged, renamed to services.json.corrupt-<time>
// (kept for the operator) and treated as empty: a bad file must not keep
// the load balancer down. A file written by a newer format version is an
// error, because starting empty would silently drop every service.
func (s *Store) Load(ctx context.Context) (Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return Snapshot{}, err
	}
	path := s.Path()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Snapshot{}, nil
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("state: read %s: %w", path, err)
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil || f.FormatVersion == 0 {
		if err == nil {
			err = errors.New("missing formatVersion")
		}
		return Snapshot{}, s.quarantine(path, err)
	}
	if f.FormatVersion > FormatVersion {
		return Snapshot{}, fmt.Errorf("state: %s has format version %d, this xlbd reads up to %d (downgrade?): refusing to start with an empty state; move the file away to start empty", path, f.FormatVersion, FormatVersion)
	}
	return Snapshot{Generation: f.Generation, Services: f.Services}, nil
}

func (s *Store) quarantine(path string, parseErr error) error {
	dst := fmt.Sprintf("%s.corrupt-%s", path, s.now().UTC().Format("20060102T150405.000000000Z"))
	s.log.Error("state file is corrupt; moved aside, starting without its content", "file", path, "error", parseErr, "movedTo", dst)
	if err := os.Rename(path, dst); err != nil {
		return fmt.Errorf("state: move corrupt %s aside: %w", path, err)
	}
	return nil
}

// Save writes snap atomically.
func (s *Store) Save(ctx context.Context, snap Snapshot) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	services := snap.Services
	if services == nil {
		services = []api.Service{}
	}
	data, err := json.MarshalIndent(file{FormatVersion: FormatVersion, Generation: snap.Generation, SavedAt: s.now().UTC(), Services: services}, "", "  ")
	if err != nil {
		return fmt.Errorf("state: encode: %w", err)
	}
	return writeAtomic(s.dir, FileName, append(data, '\n'))
}

func writeAtomic(dir, name string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("state: create temp file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("state: write %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("state: fsync %s: %w", tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("state: close %s: %w", tmp.Name(), err)
	}
	dst := filepath.Join(dir, name)
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("state: rename to %s: %w", dst, err)
	}
	// The rename is durable only once the directory entry is on disk.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("state: open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("state: fsync dir %s: %w", dir, err)
	}
	return nil
}
