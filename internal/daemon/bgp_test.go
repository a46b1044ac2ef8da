package daemon

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/internal/daemon/fakedp"
)

// The BGP API end to end through a daemon with a real (embedded) speaker
// and no router: configuration, peers, passwords never returned,
// validation naming fields, persistence across a restart, metrics.
func TestBGPAPI(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	d, stop := startDaemon(t, cfg, fakedp.New("eth0"))
	base := "http://" + d.Addr().String()
	c := http.DefaultClient

	var st api.BGPStatus
	if code := doJSON(t, c, "GET", base+"/v1/bgp", nil, &st); code != 200 || st.Global != nil || st.Peers == nil || len(st.Peers) != 0 {
		t.Fatalf("unconfigured GET /v1/bgp: %d %+v", code, st)
	}
	// Peers may be configured before the global settings.
	peer := api.BGPPeer{ASN: 65000, Password: "s3cret", HoldTimeSeconds: 9, Passive: true}
	var ps api.BGPPeerStatus
	if code := doJSON(t, c, "PUT", base+"/v1/bgp/peers/192.0.2.254", peer, &ps); code != 201 {
		t.Fatalf("put peer: %d", code)
	}
	if ps.Password != "" || !ps.PasswordSet || ps.Address != "192.0.2.254" {
		t.Fatalf("peer answer leaks or lacks fields: %+v", ps)
	}
	if code := doJSON(t, c, "PUT", base+"/v1/bgp/peers/192.0.2.254", peer, nil); code != 200 {
		t.Fatalf("identical put peer: %d, want 200", code)
	}

	g := api.BGPGlobal{ASN: 65001, RouterID: "192.0.2.1", Communities: []string{"65001:1"}}
	var gout api.BGPGlobal
	if code := doJSON(t, c, "PUT", base+"/v1/bgp", g, &gout); code != 200 || gout.ASN != 65001 {
		t.Fatalf("put bgp: %d %+v", code, gout)
	}
	if code := doJSON(t, c, "PUT", base+"/v1/bgp", g, nil); code != 200 {
		t.Fatalf("identical put bgp: %d", code)
	}
	// A VIP with a backend is announced once BGP runs.
	svc := api.Service{Spec: api.ServiceSpec{VIPs: []string{"203.0.113.7"}, Port: 80, Protocol: "tcp", Backends: []api.Backend{{Address: "10.0.0.1", Port: 80}}}}
	if code := doJSON(t, c, "PUT", base+"/v1/services/web", svc, nil); code != 201 {
		t.Fatalf("put service: %d", code)
	}
	doJSON(t, c, "GET", base+"/v1/bgp", nil, &st)
	if st.Global == nil || len(st.Peers) != 1 || !slices.Equal(st.Announced, []string{"203.0.113.7/32"}) {
		t.Fatalf("GET /v1/bgp: %+v", st)
	}
	if st.Peers[0].Password != "" || !st.Peers[0].PasswordSet || st.Peers[0].State == "" {
		t.Fatalf("peer status: %+v", st.Peers[0])
	}

	// Validation errors name the JSON field and change nothing.
	bad := []struct {
		method, path string
		body         any
		field, value string
	}{
		{"PUT", "/v1/bgp", api.BGPGlobal{ASN: 0, RouterID: "192.0.2.1"}, "asn", "0"},
		{"PUT", "/v1/bgp", api.BGPGlobal{ASN: 1, RouterID: "2001:db8::1"}, "routerID", "2001:db8::1"},
		{"PUT", "/v1/bgp", api.BGPGlobal{ASN: 1, RouterID: "192.0.2.1", Communities: []string{"70000:1"}}, "communities", "70000:1"},
		{"PUT", "/v1/bgp/peers/not-an-ip", api.BGPPeer{ASN: 1}, "address", "not-an-ip"},
		{"PUT", "/v1/bgp/peers/192.0.2.9", api.BGPPeer{ASN: 1, HoldTimeSeconds: 2}, "holdTimeSeconds", "2"},
		{"PUT", "/v1/bgp/peers/192.0.2.9", api.BGPPeer{ASN: 1, Families: []string{"l2vpn"}}, "families", "l2vpn"},
		{"PUT", "/v1/bgp/peers/192.0.2.9", api.BGPPeer{Address: "192.0.2.8", ASN: 1}, "address", "192.0.2.8"},
		{"PUT", "/v1/bgp/peers", api.BGPPeerReplace{Items: []api.BGPPeer{{Address: "192.0.2.9", ASN: 1}, {Address: "192.0.2.9", ASN: 2}}}, "items[1].address", "192.0.2.9"},
		{"PUT", "/v1/bgp/peers", api.BGPPeerReplace{Items: []api.BGPPeer{{Address: "192.0.2.9", ASN: 4294967295}}}, "items[0].asn", "4294967295"},
	}
	for _, b := range bad {
		var e api.Error
		if code := doJSON(t, c, b.method, base+b.path, b.body, &e); code != 400 || e.Field != b.field || e.Value != b.value || e.Allowed == "" {
			t.Errorf("%s %s %+v: %d %+v, want 400 field=%s value=%s", b.method, b.path, b.body, code, e, b.field, b.value)
		}
	}
	long := api.BGPPeer{ASN: 1, Password: strings.Repeat("p", 81)}
	var e api.Error
	if code := doJSON(t, c, "PUT", base+"/v1/bgp/peers/192.0.2.9", long, &e); code != 400 || e.Field != "password" || strings.Contains(e.Error(), "ppp") {
		t.Errorf("long password: %d %+v (the password must not be echoed)", code, e)
	}
	if code := doJSON(t, c, "DELETE", base+"/v1/bgp/peers/192.0.2.9", nil, nil); code != 404 {
		t.Errorf("delete absent peer: %d", code)
	}

	// Metrics.
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`xlb_bgp_session_up{peer="192.0.2.254"} 0`, "xlb_bgp_prefixes_announced 1", `xlb_bgp_updates_sent_total{peer="192.0.2.254"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Persisted (passwords included, 0600) and restored on start.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "bgp.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bgp.json: %v %v", fi, err)
	}
	d2, _ := startDaemon(t, cfg, fakedp.New("eth0"))
	base2 := "http://" + d2.Addr().String()
	var st2 api.BGPStatus
	doJSON(t, c, "GET", base2+"/v1/bgp", nil, &st2)
	if st2.Global == nil || st2.Global.ASN != 65001 || len(st2.Peers) != 1 || !st2.Peers[0].PasswordSet || !slices.Equal(st2.Announced, []string{"203.0.113.7/32"}) {
		t.Fatalf("after restart: %+v", st2)
	}
	if code := doJSON(t, c, "DELETE", base2+"/v1/bgp/peers/192.0.2.254", nil, nil); code != 204 {
		t.Fatalf("delete peer: %d", code)
	}
	if code := doJSON(t, c, "DELETE", base2+"/v1/bgp", nil, nil); code != 204 {
		t.Fatalf("delete bgp: %d", code)
	}
	var st3 api.BGPStatus
	doJSON(t, c, "GET", base2+"/v1/bgp", nil, &st3)
	if st3.Global != nil || len(st3.Peers) != 0 || len(st3.Announced) != 0 {
		t.Fatalf("after DELETE: %+v", st3)
	}
}
