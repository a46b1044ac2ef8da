package state

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/api"
)

func TestBGPRoundTripAndCorrupt(t *testing.T) {
	ctx := context.Background()
	s, _ := testStore(t)
	if c, err := s.LoadBGP(ctx); err != nil || c.Global != nil || len(c.Peers) != 0 {
		t.Fatalf("empty dir: %+v %v", c, err)
	}
	lp := uint32(200)
	want := BGPConfig{
		Global: &api.BGPGlobal{ASN: 65001, RouterID: "192.0.2.1", LocalPref: &lp, Communities: []string{"65001:1"}},
		Peers:  []api.BGPPeer{{Address: "192.0.2.254", ASN: 65000, Password: "s3cret", HoldTimeSeconds: 9}},
	}
	if err := s.SaveBGP(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.LoadBGP(ctx)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v %v\nwant %+v", got, err, want)
	}
	st, err := os.Stat(s.BGPPath())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("bgp.json must be 0600 (it holds passwords): %v %v", st.Mode(), err)
	}
	// The services file is untouched by BGP writes.
	if _, err := os.Stat(s.Path()); !os.IsNotExist(err) {
		t.Fatalf("services.json written by SaveBGP: %v", err)
	}
	if err := os.WriteFile(s.BGPPath(), []byte("{nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = s.LoadBGP(ctx)
	if err != nil || got.Global != nil {
		t.Fatalf("corrupt file: %+v %v", got, err)
	}
	m, _ := filepath.Glob(s.BGPPath() + ".corrupt-*")
	if len(m) != 1 || !strings.HasSuffix(filepath.Dir(m[0]), "state") {
		t.Fatalf("corrupt file not moved aside: %v", m)
	}
}
