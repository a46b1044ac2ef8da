package lbclient_test

import (
	"context"
	"testing"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
)

func TestBGP(t *testing.T) {
	fake := lbclienttest.NewFake()
	c := newClient(t, lbclient.Config{Endpoint: fake.Start(t)})
	ctx := context.Background()

	st, err := c.GetBGP(ctx)
	if err != nil || st.Global != nil {
		t.Fatalf("GetBGP: %+v %v", st, err)
	}
	if _, err := c.PutBGP(ctx, api.BGPGlobal{ASN: 65001, RouterID: "nope"}); !lbclient.IsInvalid(err) {
		t.Fatalf("bad router ID: %v", err)
	}
	g, err := c.PutBGP(ctx, api.BGPGlobal{ASN: 65001, RouterID: "192.0.2.1"})
	if err != nil || g.ASN != 65001 {
		t.Fatalf("PutBGP: %+v %v", g, err)
	}

	ps, created, err := c.PutBGPPeer(ctx, api.BGPPeer{Address: "2001:db8::1", ASN: 65000, Password: "pw"})
	if err != nil || !created || ps.Password != "" || !ps.PasswordSet {
		t.Fatalf("PutBGPPeer: %+v %v %v", ps, created, err)
	}
	if stored, _ := fake.BGPPeer("2001:db8::1"); stored.Password != "pw" {
		t.Fatalf("password not sent: %+v", stored)
	}
	if _, created, err = c.PutBGPPeer(ctx, api.BGPPeer{Address: "2001:db8::1", ASN: 65000}); err != nil || created {
		t.Fatalf("replace peer: created=%v %v", created, err)
	}
	if _, _, err := c.PutBGPPeer(ctx, api.BGPPeer{ASN: 1}); err == nil {
		t.Fatal("empty address accepted")
	}
	fake.SetPeerState("2001:db8::1", "established")
	list, err := c.ListBGPPeers(ctx)
	if err != nil || len(list.Items) != 1 || list.Items[0].State != "established" {
		t.Fatalf("ListBGPPeers: %+v %v", list, err)
	}
	list, err = c.PutBGPPeers(ctx, []api.BGPPeer{{Address: "192.0.2.254", ASN: 65000}, {Address: "192.0.2.253", ASN: 65000}})
	if err != nil || len(list.Items) != 2 || list.Items[0].Address != "192.0.2.253" {
		t.Fatalf("PutBGPPeers: %+v %v", list, err)
	}
	if err := c.DeleteBGPPeer(ctx, "192.0.2.254"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteBGPPeer(ctx, "192.0.2.254"); !lbclient.IsNotFound(err) {
		t.Fatalf("second delete: %v", err)
	}
	if err := c.DeleteBGP(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.GetBGP(ctx); st.Global != nil || len(st.Peers) != 1 {
		t.Fatalf("after DeleteBGP: %+v", st)
	}
	reqs := fake.Requests()
	if last := reqs[len(reqs)-1]; last.Path != "/v1/bgp" {
		t.Fatalf("last request: %+v", last)
	}
}
