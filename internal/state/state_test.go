package state

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/api"
)

func testStore(t *testing.T) (*Store, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	s, err := Open(filepath.Join(t.TempDir(), "state"), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s, &logs
}

func sample() []api.Service {
	w := uint32(2)
	return []api.Service{{
		Name: "web", Labels: map[string]string{"a": "b"},
		Spec: api.ServiceSpec{VIPs: []string{"192.0.2.1"}, Port: 80, Protocol: "tcp",
			Backends: []api.Backend{{Address: "10.0.0.1", Port: 8080, Weight: &w}}},
	}}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := testStore(t)
	snap, err := s.Load(ctx)
	if err != nil || len(snap.Services) != 0 || snap.Generation != 0 {
		t.Fatalf("missing file: got %+v %v", snap, err)
	}
	want := Snapshot{Generation: 7, Services: sample()}
	if err := s.Save(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v %v, want %+v", got, err, want)
	}
	// Overwrite: the new content wins, and no temp files are left behind.
	if err := s.Save(ctx, Snapshot{Generation: 8}); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load(ctx)
	if err != nil || got.Generation != 8 || len(got.Services) != 0 {
		t.Fatalf("after overwrite: %+v %v", got, err)
	}
	entries, _ := os.ReadDir(s.dir)
	if len(entries) != 1 || entries[0].Name() != FileName {
		t.Fatalf("directory holds %v, want only %s", entries, FileName)
	}
	info, _ := os.Stat(s.dir)
	if info.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v, want 0700", info.Mode().Perm())
	}
	// The file carries its format version.
	var raw map[string]any
	data, _ := os.ReadFile(s.Path())
	if err := json.Unmarshal(data, &raw); err != nil || raw["formatVersion"] != float64(FormatVersion) {
		t.Fatalf("file lacks formatVersion: %s", data)
	}
}

// A failed write (simulated by a directory where the temporary file cannot
// be created) must leave the existing file intact.
func TestSaveFailureKeepsOldFile(t *testing.T) {
	ctx := context.Background()
	s, _ := testStore(t)
	if err := s.Save(ctx, Snapshot{Generation: 1, Services: sample()}); err != nil {
		t.Fatal(err)
	}
	bad := &Store{dir: filepath.Join(s.dir, "does-not-exist"), log: s.log, now: s.now}
	if err := bad.Save(ctx, Snapshot{Generation: 2}); err == nil {
		t.Fatal("save into a missing directory succeeded")
	}
	got, err := s.Load(ctx)
	if err != nil || got.Generation != 1 || len(got.Services) != 1 {
		t.Fatalf("old state damaged: %+v %v", got, err)
	}
}

func TestCorruptFileIsQuarantined(t *testing.T) {
	ctx := context.Background()
	for _, content := range []string{"{not json", `{"services":[]}`, `{"formatVersion":1,"services":{}}`} {
		s, logs := testStore(t)
		if err := os.WriteFile(s.Path(), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		snap, err := s.Load(ctx)
		if err != nil || len(snap.Services) != 0 {
			t.Fatalf("%q: got %+v %v, want empty and no error", content, snap, err)
		}
		if _, err := os.Stat(s.Path()); !os.IsNotExist(err) {
			t.Fatalf("%q: corrupt file still in place", content)
		}
		matches, _ := filepath.Glob(s.Path() + ".corrupt-*")
		if len(matches) != 1 {
			t.Fatalf("%q: want one quarantined file, got %v", content, matches)
		}
		kept, _ := os.ReadFile(matches[0])
		if string(kept) != content {
			t.Fatalf("quarantined content changed: %q", kept)
		}
		if !strings.Contains(logs.String(), s.Path()) || !strings.Contains(logs.String(), "level=ERROR") {
			t.Fatalf("log does not name the file: %s", logs.String())
		}
		// The daemon can save again afterwards.
		if err := s.Save(ctx, Snapshot{Generation: 1}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewerFormatRefused(t *testing.T) {
	s, _ := testStore(t)
	content := `{"formatVersion":99,"services":[]}`
	if err := os.WriteFile(s.Path(), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "format version 99") {
		t.Fatalf("want a format version error, got %v", err)
	}
	if data, _ := os.ReadFile(s.Path()); string(data) != content {
		t.Fatal("file from a newer version was touched")
	}
}
