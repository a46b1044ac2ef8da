package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/internal/localports"
)

// sysctlDir fakes /proc/sys/net/ipv4. With reservable=false the reserved
// ports "file" is a directory, so reading and writing it fail as a
// read-only /proc/sys would.
func sysctlDir(t *testing.T, eph string, reservable bool) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, localports.EphemeralFile), []byte(eph+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, localports.ReservedFile)
	var err error
	if reservable {
		err = os.WriteFile(p, []byte("8080\n"), 0o644)
	} else {
		err = os.Mkdir(p, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestReserveSNATPorts(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := func(r string) config.Config {
		c := config.Defaults()
		c.SNATPortRange = r
		return c
	}
	for _, c := range []struct {
		name, eph, snat string
		reservable      bool
		wantErr         string // "" = starts
		wantReserved    string
	}{
		{"default range, reserved", "32768\t60999", "10000-29999", true, "", "8080,10000-29999"},
		{"overlap, reserved", "32768\t60999", "40000-40999", true, "", "8080,40000-40999"},
		{"no overlap, cannot reserve: warn only", "32768\t60999", "10000-29999", false, "", ""},
		{"overlap, cannot reserve: refuse", "32768\t60999", "30000-40000", false, "--snat-port-range 30000-40000 overlaps the ephemeral port range 32768-60999", ""},
		{"widened ephemeral range, cannot reserve: refuse", "1024\t65535", "10000-29999", false, "--snat-port-range 10000-29999 overlaps the ephemeral port range 1024-65535", ""},
		{"covers the ephemeral range: refuse", "32768\t60999", "20000-65535", true, "leave the host no source ports", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := sysctlDir(t, c.eph, c.reservable)
			err := ReserveSNATPorts(dir, cfg(c.snat), log)
			if c.wantErr == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, c.wantErr)
			}
			if c.wantReserved != "" {
				b, _ := os.ReadFile(filepath.Join(dir, localports.ReservedFile))
				if strings.TrimSpace(string(b)) != c.wantReserved {
					t.Fatalf("reserved ports %q, want %q", b, c.wantReserved)
				}
				// Idempotent: a restart finds it reserved and keeps it.
				if err := ReserveSNATPorts(dir, cfg(c.snat), log); err != nil {
					t.Fatal(err)
				}
				if b2, _ := os.ReadFile(filepath.Join(dir, localports.ReservedFile)); string(b2) != string(b) {
					t.Fatalf("second start changed %q to %q", b, b2)
				}
			}
		})
	}
}
