package provider

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/provider/config"
)

// The cloud-config's BGP settings reach every dataplane at first contact,
// with the per-dataplane router ID and extra peers, and come back after a
// dataplane restart (new boot ID).
func TestBGPPushedToDataplanes(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "tor.pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(strings.NewReader(`
clusterName: test
dataplanes:
- {name: dp1, endpoint: "http://127.0.0.1:1", bgp: {routerID: 10.0.0.1}}
- {name: dp2, endpoint: "http://127.0.0.1:2", bgp: {routerID: 10.0.0.2, localASN: 64600, peers: [{address: 10.0.2.254, asn: 64514, passwordFile: ` + pw + `}]}}
pools:
- {name: main, cidrs: [192.0.2.0/29], default: true}
bgp:
  localASN: 64512
  communities: ["64512:100"]
  peers: [{address: 10.0.0.254, asn: 64513, holdTime: 9s}]
`))
	if err != nil {
		t.Fatal(err)
	}
	dp1, dp2 := newDP(t), newDP(t)
	// The real client: it has the BGP methods the push needs.
	c1, c2 := dp1.Dataplane.(*lbclient.Client), dp2.Dataplane.(*lbclient.Client)
	lb, err := NewLoadBalancer(cfg, Deps{Kube: fake.NewClientset(), Recorder: record.NewFakeRecorder(100),
		Dataplanes: []NamedDataplane{{Name: "dp1", Dataplane: c1}, {Name: "dp2", Dataplane: c2}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dp1.fake.SetStatus(api.Status{BootID: "boot-1", Ready: true})
	dp2.fake.SetStatus(api.Status{BootID: "boot-1", Ready: true})
	lb.PollOnce(ctx)

	check := func(d *lbclient.Client, asn uint32, routerID string, peers ...string) {
		t.Helper()
		st, err := d.GetBGP(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Global == nil || st.Global.ASN != asn || st.Global.RouterID != routerID || len(st.Global.Communities) != 1 {
			t.Fatalf("global settings: %+v, want asn %d router ID %s with the default community", st.Global, asn, routerID)
		}
		var got []string
		for _, p := range st.Peers {
			got = append(got, p.Address)
		}
		if strings.Join(got, ",") != strings.Join(peers, ",") {
			t.Fatalf("peers %v, want %v", got, peers)
		}
	}
	check(c1, 64512, "10.0.0.1", "10.0.0.254")
	check(c2, 64600, "10.0.0.2", "10.0.0.254", "10.0.2.254")
	if p, ok := dp2.fake.BGPPeer("10.0.2.254"); !ok || p.Password != "s3cret" {
		t.Fatalf("password from passwordFile not pushed: %+v", p)
	}
	if p, _ := dp1.fake.BGPPeer("10.0.0.254"); p.HoldTimeSeconds != 9 {
		t.Fatalf("hold time: %+v", p)
	}

	// dp1 restarts and forgets its BGP settings: the next poll restores them.
	if err := c1.DeleteBGP(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.PutBGPPeers(ctx, nil); err != nil {
		t.Fatal(err)
	}
	dp1.fake.SetStatus(api.Status{BootID: "boot-2", Ready: true})
	lb.PollOnce(ctx)
	check(c1, 64512, "10.0.0.1", "10.0.0.254")
}
