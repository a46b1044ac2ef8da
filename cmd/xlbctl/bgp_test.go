package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
)

func TestBGPCommands(t *testing.T) {
	fake := lbclienttest.NewFake()
	env := map[string]string{envServer: fake.Start(t)}

	res := xlbctl(t, env, "", "get", "bgp")
	if res.code != 0 || !strings.Contains(res.stdout, "not configured") {
		t.Fatalf("get bgp (unconfigured): %+v", res)
	}
	res = xlbctl(t, env, "", "bgp", "set-global", "--asn", "65001", "--router-id", "192.0.2.1", "--local-pref", "200")
	if res.code != 0 || res.stdout != "bgp configured: asn 65001, router ID 192.0.2.1\n" {
		t.Fatalf("set-global: %+v", res)
	}
	res = xlbctl(t, env, "", "bgp", "set-global", "--asn", "65001", "--router-id", "nope")
	if res.code == 0 || !strings.Contains(res.stderr, "routerID") {
		t.Fatalf("set-global with a bad router ID: %+v", res)
	}
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	res = xlbctl(t, env, "", "bgp", "add-peer", "--address", "192.0.2.254", "--asn", "65000", "--password-file", pw, "--hold-time", "9s")
	if res.code != 0 || res.stdout != "bgp peer/192.0.2.254 created\n" {
		t.Fatalf("add-peer: %+v", res)
	}
	if p, ok := fake.BGPPeer("192.0.2.254"); !ok || p.Password != "s3cret" || p.HoldTimeSeconds != 9 || p.ASN != 65000 {
		t.Fatalf("stored peer: %+v", p)
	}
	res = xlbctl(t, env, "", "bgp", "add-peer", "--address", "192.0.2.254", "--asn", "65000", "--hold-time", "1500ms")
	if res.code == 0 || !strings.Contains(res.stderr, "whole seconds") {
		t.Fatalf("fractional hold time: %+v", res)
	}
	fake.SetPeerState("192.0.2.254", "established")
	res = xlbctl(t, env, "", "get", "bgp")
	want := "BGP: asn 65001, router ID 192.0.2.1\nAnnounced: -\n\n" +
		"PEER         ASN    STATE        UPTIME  SENT  RECEIVED  MD5\n" +
		"192.0.2.254  65000  established  -       0     0         yes\n"
	if res.code != 0 || res.stdout != want {
		t.Fatalf("get bgp:\n%s\nwant:\n%s\n%s", res.stdout, want, res.stderr)
	}
	res = xlbctl(t, env, "", "get", "bgp", "-o", "json")
	if res.code != 0 || strings.Contains(res.stdout, "s3cret") || !strings.Contains(res.stdout, `"passwordSet": true`) {
		t.Fatalf("get bgp -o json: %+v", res)
	}
	res = xlbctl(t, env, "", "bgp", "delete-peer", "192.0.2.254")
	if res.code != 0 || res.stdout != "bgp peer/192.0.2.254 deleted\n" {
		t.Fatalf("delete-peer: %+v", res)
	}
	res = xlbctl(t, env, "", "bgp", "delete-peer", "192.0.2.254")
	if res.code == 0 || !strings.Contains(res.stderr, "not found") {
		t.Fatalf("delete-peer twice: %+v", res)
	}
	if res = xlbctl(t, env, "", "bgp", "stop"); res.code != 0 {
		t.Fatalf("stop: %+v", res)
	}
}
